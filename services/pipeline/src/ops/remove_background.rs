//! `remove_background`: make the background transparent with a segmentation model.
//!
//! The model is an ONNX file the filters are configured with (`--model-dir`); the filter runs
//! it behind [`Segmenter`] (its `segment` module), and this file does the rest, as rembg does
//! for the U²-Net family:
//!
//! * before: the image resized to the model's input (Lanczos3, aspect not kept), divided by
//!   its brightest value, normalised by the model's mean and deviation, as planar NCHW floats;
//! * after: the model's first output stretched to 0..=1 (min to max), upscaled to the image
//!   (bilinear), and, with `refine` (the default), its edges fitted to the image's by a fast
//!   guided filter (He and Sun, 2015) in the band where the mask is unsure: the cheap stand-in
//!   for trimap alpha matting, which turns a mask from a 320-pixel model into edges that
//!   follow outlines at full size;
//! * the output is the image as RGBA with that alpha, multiplied into an alpha it had.

use std::fmt::Debug;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use pixelmesh_proto::v1;
use serde_json::Value;

use super::interest::box_shrink;
use super::json::{Fields, quoted};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::{Bitmap, luma};
use crate::budget::{Cost, Shape, ns};

pub(crate) const NAME: &str = "remove_background";

/// rembg's default model, and ours.
pub const DEFAULT_MODEL: &str = "u2net";
/// Longest model name: a file name, not a path.
pub const MAX_MODEL_NAME: usize = 64;

/// The guided filter runs at most this many pixels on the longer side; its coefficients are
/// smooth, so upscaling them loses nothing a matte would show (the "fast" guided filter).
const REFINE_SIDE: u32 = 1024;
/// The guided filter's regulariser, for a guide in 0..=1: edges of more contrast than its
/// square root (1%) steer the mask; flatter texture is smoothed over.
const REFINE_EPSILON: f32 = 1e-4;
/// The upscaled mask at or below this is background and at or above [`SURE_FOREGROUND`]
/// foreground, as the model said; between them, refinement decides.
const SURE_BACKGROUND: f32 = 0.02;
const SURE_FOREGROUND: f32 = 0.98;
/// Guided-filter passes, each on the last one's result cut at one half.
const REFINE_PASSES: usize = 2;

/// The budget's estimate of one inference, single core: U²-Net (the largest common model,
/// about 47 GFLOP at 320x320) on tract; smaller models take less.
const INFERENCE_NS: f64 = 1.5e9;
/// The inference's working memory: U²-Net's activations at 320x320 with tract's planning.
const INFERENCE_BYTES: u64 = 512 << 20;
/// Single-core nanoseconds per image pixel for the upscale, the refinement's last pass and
/// the RGBA copy.
const NS_PER_PIXEL: f64 = 12.0;

/// What a model takes: its input's size and how pixels are normalised,
/// `(value / brightest - mean) / std` per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInput {
    pub width: u32,
    pub height: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ModelInput {
    /// ImageNet's statistics, which U²-Net and most of its family were trained with.
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
}

/// A model's output: one value per pixel of its input, larger for foreground.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub values: Vec<f32>,
}

/// Runs segmentation models by name: the filter's loaded ONNX models.
pub trait Segmenter: Send + Sync + Debug {
    /// The input the model named `model` takes; an error if there is none by that name.
    fn input(&self, model: &str) -> Result<ModelInput, String>;

    /// Runs `model` on `tensor` (laid out as [`model_tensor`] makes it).
    fn infer(&self, model: &str, tensor: Vec<f32>) -> Result<Mask, String>;
}

/// What a filter with model `name` loaded advertises in its heartbeat's capabilities, and
/// what the gateway looks for before it takes a job that names the model.
pub fn model_capability(name: &str) -> String {
    format!("{MODEL_CAPABILITY}{name}")
}

/// The model a capability names, if it names one.
pub fn capability_model(capability: &str) -> Option<&str> {
    capability.strip_prefix(MODEL_CAPABILITY)
}

const MODEL_CAPABILITY: &str = "model:";

/// Checks a model name: 1 to [`MAX_MODEL_NAME`] of `a-z 0-9 . _ -`, not starting with a dot,
/// so it names a file in the model directory and nothing else.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "model must be 1 to {MAX_MODEL_NAME} characters of a-z, 0-9, '.', '_' and '-', not starting with '.', got {}",
            quoted(name)
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveBackground {
    model: String,
    refine: bool,
}

impl Default for RemoveBackground {
    fn default() -> Self {
        RemoveBackground {
            model: DEFAULT_MODEL.to_string(),
            refine: true,
        }
    }
}

impl RemoveBackground {
    pub fn new(model: &str, refine: bool) -> Result<RemoveBackground, String> {
        check_model_name(model)?;
        Ok(RemoveBackground {
            model: model.to_string(),
            refine,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// `image` as RGBA, its background transparent by `segmenter`'s model.
    pub fn apply(&self, image: Bitmap, segmenter: &dyn Segmenter) -> Result<Bitmap, String> {
        let input = segmenter.input(&self.model)?;
        let tensor = model_tensor(&image, &input)?;
        let mask = segmenter.infer(&self.model, tensor)?;
        if mask.values.is_empty()
            || mask.values.len() != (mask.width as usize) * (mask.height as usize)
        {
            return Err(format!(
                "model {} gave a {}x{} mask of {} values",
                quoted(&self.model),
                mask.width,
                mask.height,
                mask.values.len()
            ));
        }
        let alpha = alpha_from_mask(&image, &mask, self.refine)?;
        Ok(with_alpha(image, &alpha))
    }
}

impl Operator for RemoveBackground {
    const SPEC: Spec = Spec::new(
        NAME,
        "Remove background",
        "Transparent background from a segmentation model on the filters (--model-dir).",
        &[
            Field::name("model", "Model").with_default(DEFAULT_MODEL),
            Field::flag("refine", "Fit edges to the image").with_default("true"),
        ],
    );

    type Proto = v1::RemoveBackground;

    fn from_fields(fields: &Fields<'_>) -> Result<RemoveBackground, String> {
        RemoveBackground::new(
            fields.string("model")?.unwrap_or(DEFAULT_MODEL),
            fields.boolean("refine")?.unwrap_or(true),
        )
    }

    fn from_proto(p: &v1::RemoveBackground) -> Result<RemoveBackground, String> {
        let model = if p.model.is_empty() {
            DEFAULT_MODEL
        } else {
            &p.model
        };
        RemoveBackground::new(model, !p.no_refine)
    }

    fn to_proto(&self) -> v1::RemoveBackground {
        v1::RemoveBackground {
            model: self.model.clone(),
            no_refine: !self.refine,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = Vec::new();
        if self.model != DEFAULT_MODEL {
            params.push(("model", Value::from(self.model.as_str())));
        }
        if !self.refine {
            params.push(("refine", Value::from(false)));
        }
        params
    }

    fn output_channels(&self, _input: Shape) -> u64 {
        4
    }

    /// The inference at a fixed estimate (its input has the model's size, whatever the
    /// image's), and a few passes over the image.
    fn cost(&self, input: Shape, output: Shape, _context: &Context) -> Cost {
        Cost {
            peak_bytes: input
                .bytes()
                .saturating_add(output.bytes())
                .saturating_add(INFERENCE_BYTES),
            cpu_ns: INFERENCE_NS + ns(input.pixels(), NS_PER_PIXEL),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, assets: &Assets) -> Result<Bitmap, String> {
        let segmenter = assets.segmenter().ok_or_else(|| {
            format!(
                "this filter has no segmentation models (model {}); start it with --model-dir",
                quoted(&self.model)
            )
        })?;
        self.apply(image, segmenter)
    }
}

/// The model's input made from `image`: resized to the input's size (Lanczos3, aspect not
/// kept, alpha dropped), divided by the resized image's brightest value, then `(v - mean) /
/// std` per channel, as planar `[1, 3, height, width]` floats: rembg's pre-processing.
pub fn model_tensor(image: &Bitmap, input: &ModelInput) -> Result<Vec<f32>, String> {
    // Resized in the image's own layout and alpha dropped at the model's size, so a large
    // RGBA input is never copied whole; as rembg's `convert("RGB")`, alpha does not weigh the
    // colours.
    let (pixel_type, channels) = if image.has_alpha() {
        (PixelType::U8x4, 4)
    } else {
        (PixelType::U8x3, 3)
    };
    let src = ImageRef::new(image.width(), image.height(), image.data(), pixel_type)
        .map_err(|err| format!("model input: {err}"))?;
    let mut dst = Image::new(input.width, input.height, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(false);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|err| format!("model input: {err}"))?;
    let pixels = dst.into_vec();
    let brightest = pixels
        .chunks_exact(channels)
        .flat_map(|pixel| &pixel[..3])
        .copied()
        .max()
        .unwrap_or(0);
    let brightest = f32::from(brightest).max(1e-6);
    let plane = (input.width as usize) * (input.height as usize);
    let mut tensor = vec![0f32; plane * 3];
    for (i, pixel) in pixels.chunks_exact(channels).enumerate() {
        for c in 0..3 {
            tensor[c * plane + i] =
                (f32::from(pixel[c]) / brightest - input.mean[c]) / input.std[c];
        }
    }
    Ok(tensor)
}

/// The alpha plane (one byte a pixel, at the image's size) from a model's `mask`: stretched
/// to 0..=1 and upscaled; with `refine`, where the upscaled mask is unsure (the trimap's
/// unknown band, between [`SURE_BACKGROUND`] and [`SURE_FOREGROUND`]), the guided filter's
/// value instead, which follows the image's edges. Outside the band the mask stands, so the
/// filter's smoothing cannot leak into areas the model was sure of.
pub fn alpha_from_mask(image: &Bitmap, mask: &Mask, refine: bool) -> Result<Vec<u8>, String> {
    let (width, height) = (image.width(), image.height());
    let values = stretch(&mask.values);
    let refined = if refine {
        let (work_w, work_h) = refine_size(width, height);
        let guide = grey(&box_shrink(image, work_w, work_h)?, image.channels());
        // The window spans the band where the upscaled mask is unsure: one model pixel.
        let ratio = (f64::from(work_w) / f64::from(mask.width))
            .max(f64::from(work_h) / f64::from(mask.height));
        let radius = (ratio.ceil() as usize).max(2);
        // The mask cut at one half: a step where the model puts the edge. The filter fits it
        // to the image, which moves the step onto the image's edge; cut again and fitted a
        // second time, the step and the edge agree, and only edges the image itself blurs
        // stay soft. (A soft mask, or one pass, leaves the band partly transparent.)
        let (w, h) = (work_w as usize, work_h as usize);
        let mut p: Vec<f32> = resample(&values, (mask.width, mask.height), (work_w, work_h));
        let mut coefficients = (Vec::new(), Vec::new());
        for _ in 0..REFINE_PASSES {
            p.iter_mut()
                .for_each(|v| *v = if *v >= 0.5 { 1.0 } else { 0.0 });
            coefficients = guided_filter(&guide, &p, w, h, radius);
            let (a, b) = &coefficients;
            for (k, v) in p.iter_mut().enumerate() {
                *v = a[k] * guide[k] + b[k];
            }
        }
        let (a, b) = coefficients;
        let taps = (Taps::new(work_w, width), Taps::new(work_h, height));
        Some((a, b, work_w as usize, taps))
    } else {
        None
    };
    let (xs, ys) = (Taps::new(mask.width, width), Taps::new(mask.height, height));
    let channels = image.channels();
    let mut alpha = Vec::with_capacity((width as usize) * (height as usize));
    let mut rows = vec![vec![0f32; width as usize]; 3];
    let [row_m, row_a, row_b] = &mut rows[..] else {
        unreachable!("three rows")
    };
    for (y, row) in image
        .data()
        .chunks_exact(width as usize * channels)
        .enumerate()
    {
        ys.row(&values, mask.width as usize, &xs, y, row_m);
        if let Some((a, b, plane_w, (xs, ys))) = &refined {
            ys.row(a, *plane_w, xs, y, row_a);
            ys.row(b, *plane_w, xs, y, row_b);
        }
        for (x, pixel) in row.chunks_exact(channels).enumerate() {
            let sure = !(SURE_BACKGROUND..=SURE_FOREGROUND).contains(&row_m[x]);
            let value = if refined.is_none() || sure {
                row_m[x]
            } else {
                let guide = f32::from(luma(pixel[0], pixel[1], pixel[2])) / 255.0;
                row_a[x] * guide + row_b[x]
            };
            alpha.push((value.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    Ok(alpha)
}

/// The model's values stretched so the smallest is 0 and the largest 1, as rembg does; a flat
/// output (nothing told apart) is only clamped.
fn stretch(values: &[f32]) -> Vec<f32> {
    let (low, high) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = high - low;
    values
        .iter()
        .map(|&v| {
            let v = if v.is_finite() { v } else { 0.0 };
            if span > 1e-6 {
                (v - low) / span
            } else {
                v.clamp(0.0, 1.0)
            }
        })
        .collect()
}

/// The guided filter's working size: the image's, at most [`REFINE_SIDE`] on the longer side.
fn refine_size(width: u32, height: u32) -> (u32, u32) {
    let longer = width.max(height);
    if longer <= REFINE_SIDE {
        return (width, height);
    }
    let scale = f64::from(REFINE_SIDE) / f64::from(longer);
    let side = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
    (side(width), side(height))
}

/// Luma in 0..=1 of RGB or RGBA bytes.
fn grey(pixels: &[u8], channels: usize) -> Vec<f32> {
    pixels
        .chunks_exact(channels)
        .map(|p| f32::from(luma(p[0], p[1], p[2])) / 255.0)
        .collect()
}

/// He's guided filter of `p` by `guide` (both `width` x `height`), as its smoothed linear
/// coefficients: the output at a pixel is `a * guide + b` there.
fn guided_filter(
    guide: &[f32],
    p: &[f32],
    width: usize,
    height: usize,
    radius: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mean = |plane: &[f32]| box_mean(plane, width, height, radius);
    let mean_i = mean(guide);
    let mean_p = mean(p);
    let product: Vec<f32> = guide.iter().zip(p).map(|(i, p)| i * p).collect();
    let square: Vec<f32> = guide.iter().map(|i| i * i).collect();
    let corr_ip = mean(&product);
    let corr_ii = mean(&square);
    let mut a = Vec::with_capacity(guide.len());
    let mut b = Vec::with_capacity(guide.len());
    for k in 0..guide.len() {
        let covariance = corr_ip[k] - mean_i[k] * mean_p[k];
        let variance = corr_ii[k] - mean_i[k] * mean_i[k];
        let slope = covariance / (variance + REFINE_EPSILON);
        a.push(slope);
        b.push(mean_p[k] - slope * mean_i[k]);
    }
    (mean(&a), mean(&b))
}

/// The mean over the `(2 radius + 1)²` window around each pixel, the window cut at the
/// borders: two passes of running sums, so its cost does not grow with the radius.
fn box_mean(plane: &[f32], width: usize, height: usize, radius: usize) -> Vec<f32> {
    let mut rows = vec![0f32; plane.len()];
    for (src, dst) in plane.chunks_exact(width).zip(rows.chunks_exact_mut(width)) {
        running_mean(src, dst, radius);
    }
    let mut out = vec![0f32; plane.len()];
    let mut column = vec![0f32; height];
    let mut result = vec![0f32; height];
    for x in 0..width {
        for y in 0..height {
            column[y] = rows[y * width + x];
        }
        running_mean(&column, &mut result, radius);
        for y in 0..height {
            out[y * width + x] = result[y];
        }
    }
    out
}

/// `dst[i]` = the mean of `src[i - radius ..= i + radius]` within bounds.
fn running_mean(src: &[f32], dst: &mut [f32], radius: usize) {
    let n = src.len();
    // Prefix sums in f64: a long row of f32 sums would drift.
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    let mut sum = 0f64;
    for &v in src {
        sum += f64::from(v);
        prefix.push(sum);
    }
    for (i, out) in dst.iter_mut().enumerate() {
        let lo = i.saturating_sub(radius);
        let hi = (i + radius + 1).min(n);
        *out = ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32;
    }
}

/// Bilinear taps along one axis from `from` samples to `to`, pixel centres aligned.
struct Taps {
    /// For each output index: the first source index and the second's weight.
    taps: Vec<(usize, usize, f32)>,
}

impl Taps {
    fn new(from: u32, to: u32) -> Taps {
        let scale = f64::from(from) / f64::from(to);
        let last = from as usize - 1;
        let taps = (0..to)
            .map(|i| {
                let at = ((f64::from(i) + 0.5) * scale - 0.5).clamp(0.0, last as f64);
                let low = at.floor() as usize;
                (low, (low + 1).min(last), (at - low as f64) as f32)
            })
            .collect();
        Taps { taps }
    }

    /// Row `y` (of the output's rows, these taps) of `plane` (`plane_width` wide) upscaled
    /// along both axes into `out`.
    fn row(&self, plane: &[f32], plane_width: usize, xs: &Taps, y: usize, out: &mut [f32]) {
        let (y0, y1, wy) = self.taps[y];
        let top = &plane[y0 * plane_width..][..plane_width];
        let bottom = &plane[y1 * plane_width..][..plane_width];
        for (value, &(x0, x1, wx)) in out.iter_mut().zip(&xs.taps) {
            let upper = top[x0] + (top[x1] - top[x0]) * wx;
            let lower = bottom[x0] + (bottom[x1] - bottom[x0]) * wx;
            *value = upper + (lower - upper) * wy;
        }
    }
}

/// `plane` (`from` sized) resampled bilinearly to `to`.
fn resample(plane: &[f32], from: (u32, u32), to: (u32, u32)) -> Vec<f32> {
    let xs = Taps::new(from.0, to.0);
    let ys = Taps::new(from.1, to.1);
    let mut out = vec![0f32; (to.0 as usize) * (to.1 as usize)];
    for (y, row) in out.chunks_exact_mut(to.0 as usize).enumerate() {
        ys.row(plane, from.0 as usize, &xs, y, row);
    }
    out
}

/// `image` as RGBA with `alpha` (one byte a pixel), multiplied into the alpha it had.
fn with_alpha(image: Bitmap, alpha: &[u8]) -> Bitmap {
    let (width, height) = (image.width(), image.height());
    let channels = image.channels();
    let mut data = Vec::with_capacity(alpha.len() * 4);
    for (pixel, &a) in image.data().chunks_exact(channels).zip(alpha) {
        let kept = if channels == 4 {
            ((u16::from(pixel[3]) * u16::from(a) + 127) / 255) as u8
        } else {
            a
        };
        data.extend_from_slice(&[pixel[0], pixel[1], pixel[2], kept]);
    }
    Bitmap::new(width, height, true, data).expect("an RGBA buffer of the image's size")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::disc;
    use std::sync::Mutex;

    /// Stands in for the filter's ONNX runtime: says "foreground" where the model's input is
    /// redder than it is green, and records the tensors it was given.
    #[derive(Debug, Default)]
    struct RedIsForeground {
        seen: Mutex<Vec<Vec<f32>>>,
    }

    const INPUT: ModelInput = ModelInput {
        width: 32,
        height: 24,
        mean: ModelInput::IMAGENET_MEAN,
        std: ModelInput::IMAGENET_STD,
    };

    impl Segmenter for RedIsForeground {
        fn input(&self, model: &str) -> Result<ModelInput, String> {
            match model {
                "red" => Ok(INPUT),
                other => Err(format!("no model {other}")),
            }
        }

        fn infer(&self, _model: &str, tensor: Vec<f32>) -> Result<Mask, String> {
            let plane = (INPUT.width * INPUT.height) as usize;
            let values = (0..plane)
                .map(|i| {
                    if tensor[i] > tensor[plane + i] {
                        0.9
                    } else {
                        0.1
                    }
                })
                .collect();
            self.seen.lock().unwrap().push(tensor);
            Ok(Mask {
                width: INPUT.width,
                height: INPUT.height,
                values,
            })
        }
    }

    /// A red disc of radius `r` at the centre of a `width` x `height` green field.
    fn alpha_at(image: &Bitmap, x: u32, y: u32) -> u8 {
        image.data()[((y * image.width() + x) * 4 + 3) as usize]
    }

    #[test]
    fn the_tensor_is_resized_scaled_by_the_brightest_and_normalised_planar() {
        let image = Bitmap::new(64, 48, false, [200u8, 100, 50].repeat(64 * 48)).unwrap();
        let tensor = model_tensor(&image, &INPUT).unwrap();
        let plane = 32 * 24;
        assert_eq!(tensor.len(), plane * 3);
        // Brightest is 200: red is 1.0, green 0.5, blue 0.25 before normalising.
        let expect = |c: usize, v: f32| (v - INPUT.mean[c]) / INPUT.std[c];
        assert!((tensor[0] - expect(0, 1.0)).abs() < 1e-4);
        assert!((tensor[plane + 5] - expect(1, 0.5)).abs() < 1e-4);
        assert!((tensor[2 * plane + plane - 1] - expect(2, 0.25)).abs() < 1e-4);
        // With alpha, the same colours make the same tensor, however transparent (alpha
        // 255 would be the brightest value if it were counted).
        let rgba = [200u8, 100, 50, 255, 200, 100, 50, 0].repeat(32 * 48);
        let rgba = Bitmap::new(64, 48, true, rgba).unwrap();
        assert_eq!(model_tensor(&rgba, &INPUT).unwrap(), tensor);
    }

    #[test]
    fn the_foreground_keeps_its_pixels_and_the_background_turns_transparent() {
        let image = disc(400, 300, 90.0);
        let segmenter = RedIsForeground::default();
        for refine in [true, false] {
            let out = RemoveBackground::new("red", refine)
                .unwrap()
                .apply(image.clone(), &segmenter)
                .unwrap();
            assert!(out.has_alpha());
            assert_eq!((out.width(), out.height()), (400, 300));
            assert_eq!(&out.data()[(150 * 400 + 200) * 4..][..3], &[220, 30, 40]);
            assert_eq!(alpha_at(&out, 200, 150), 255, "centre, refine {refine}");
            assert_eq!(alpha_at(&out, 2, 2), 0, "corner, refine {refine}");
            assert_eq!(alpha_at(&out, 200, 150 - 70), 255, "inside the rim");
            assert_eq!(alpha_at(&out, 200, 150 - 110), 0, "outside the rim");
        }
        assert_eq!(segmenter.seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn refining_moves_the_mask_edge_onto_the_image_edge() {
        // The model sees 32x24 of a 400x300 image: its edge is a band about 12 pixels wide.
        let image = disc(400, 300, 90.0);
        let segmenter = RedIsForeground::default();
        let soft = RemoveBackground::new("red", false)
            .unwrap()
            .apply(image.clone(), &segmenter)
            .unwrap();
        let sharp = RemoveBackground::new("red", true)
            .unwrap()
            .apply(image, &segmenter)
            .unwrap();
        // Along the row through the centre, from the disc's left edge at x = 110: how many
        // pixels are neither clear nor solid.
        let unsure = |image: &Bitmap| {
            (60..160)
                .filter(|&x| (16..=239).contains(&alpha_at(image, x, 150)))
                .count()
        };
        assert!(
            unsure(&soft) >= 6,
            "the upscaled mask is soft: {}",
            unsure(&soft)
        );
        assert!(
            unsure(&sharp) <= 2,
            "the refined mask is crisp: {}",
            unsure(&sharp)
        );
        // And it sits on the disc's edge.
        assert!(alpha_at(&sharp, 108, 150) < 32 && alpha_at(&sharp, 112, 150) > 223);
    }

    #[test]
    fn an_alpha_the_image_had_is_kept_where_the_mask_keeps_the_pixel() {
        let mut image = Bitmap::new(8, 8, true, [220u8, 30, 40, 128].repeat(64)).unwrap();
        image.data_mut()[3] = 0;
        let out = RemoveBackground::new("red", false)
            .unwrap()
            .apply(image, &RedIsForeground::default())
            .unwrap();
        // All red: a flat mask of 0.9, clamped, not stretched.
        assert_eq!(alpha_at(&out, 0, 0), 0);
        assert_eq!(
            alpha_at(&out, 4, 4),
            ((128.0f32 * 0.9 * 255.0 / 255.0).round()) as u8
        );
    }

    #[test]
    fn names_are_checked_and_errors_name_the_model() {
        assert!(RemoveBackground::new("isnet-general-use", true).is_ok());
        assert!(RemoveBackground::new("u2net_human_seg.v2", true).is_ok());
        for bad in [
            "",
            "../etc/passwd",
            ".hidden",
            "U2NET",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(RemoveBackground::new(bad, true).is_err(), "{bad:?}");
        }
        let err = RemoveBackground::new("other", true)
            .unwrap()
            .apply(disc(10, 10, 3.0), &RedIsForeground::default())
            .unwrap_err();
        assert_eq!(err, "no model other");
        let none = Operator::run(
            &RemoveBackground::default(),
            disc(10, 10, 3.0),
            &Assets::default(),
        )
        .unwrap_err();
        assert!(none.contains("--model-dir"), "{none}");
    }

    #[test]
    fn box_means_cut_the_window_at_the_borders() {
        let plane = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mean = box_mean(&plane, 3, 2, 1);
        // Top-left: the mean of 1, 2, 4, 5.
        assert!((mean[0] - 3.0).abs() < 1e-6);
        // Middle of the top row: all six.
        assert!((mean[1] - 3.5).abs() < 1e-6);
    }
}
