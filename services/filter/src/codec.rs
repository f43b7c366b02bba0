//! Decoding with limits, and encoding.
//!
//! Decoding detects the format from the bytes, reads the header, and refuses an image whose
//! width x height is over [`Limits::max_pixels`] before any pixel buffer exists: a 50-byte PNG
//! can claim to be 100000x100000. image's own allocation limit is a second guard for what the
//! header does not tell. Every colour type comes out as 8-bit RGB or RGBA, upright (the EXIF
//! orientation is applied, since the output carries no EXIF to say how to rotate it).
//!
//! JPEG is decoded by libjpeg-turbo (the mozjpeg crate; its C is built from source with cc and
//! nasm, and also builds for the static musl image): 20-30 % faster than image's zune-jpeg
//! here, and it can scale the inverse DCT, so [`decode_shrunk`] reads a JPEG at 1/2, 1/4 or 1/8
//! of its size ("shrink-on-load"; 1/8 saves about 30 % of a full decode, since reading the
//! entropy-coded data, which every scale must do, is most of the work). A CMYK JPEG with its
//! CMYK profile is read as CMYK and converted through the profile ([`colour::CmykToSrgb`]);
//! one without a profile, which libjpeg-turbo cannot convert to RGB, and the other formats go
//! through image.
//!
//! Encoding uses libjpeg-turbo for baseline JPEG too (four times faster than jpeg-encoder here),
//! jpeg-encoder for progressive JPEG (faster there than libjpeg-turbo's two-pass progressive),
//! and image's encoders for the rest (WebP: lossless). Nothing of the input's metadata (EXIF,
//! XMP, ICC, comments) is copied to the output unless the encoding keeps it
//! ([`encode_carrying`], [`crate::metadata`]).

use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};

use image::codecs::bmp::BmpEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::codecs::tiff::TiffEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageReader};

use pixelmesh_pipeline::budget::Input;
pub use pixelmesh_pipeline::formats::Encoding;
use pixelmesh_pipeline::formats::{MAX_FRAMES, jpeg_shrink};
use pixelmesh_pipeline::{Bitmap, FileFormat};

use crate::metadata::{self, Outgoing, XMP_APP1};
use crate::{avif, colour, gif_writer, png_writer};

// mozjpeg reports a corrupt JPEG by unwinding out of libjpeg, and `catch_unwind` turns that
// into the image's error. Built with `panic = "abort"`, one bad upload would kill the worker.
#[cfg(panic = "abort")]
compile_error!("pixelmesh-filter needs panic = \"unwind\": JPEG errors are caught by unwinding");

/// What one input may cost to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width x height accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest encoded input accepted.
    pub max_input_bytes: u64,
}

impl Default for Limits {
    /// 100 megapixels (a 12000x8000 photo; about 400 MB as RGBA) and 256 MiB of input.
    fn default() -> Self {
        Limits {
            max_pixels: 100_000_000,
            max_input_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The list in "not a supported image" messages.
const SUPPORTED: &str = "jpeg, png, webp, gif, bmp, tiff, avif";

/// Why an input could not be decoded. Every case is about the input bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input is {bytes} bytes, over the limit of {limit} bytes")]
    InputTooLarge { bytes: u64, limit: u64 },
    #[error("not a supported image ({SUPPORTED})")]
    NotAnImage,
    #[error(
        "image is {width}x{height} ({:.1} megapixels), over the limit of {:.1} megapixels",
        megapixels(*width as u64 * *height as u64),
        megapixels(*limit)
    )]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error(
        "animation of {frames} frames of {width}x{height} ({:.1} megapixels in all) is over the limit of {MAX_FRAMES} frames or {:.1} megapixels",
        megapixels(u64::from(*frames) * *width as u64 * *height as u64),
        megapixels(*limit)
    )]
    TooManyFrames {
        frames: u32,
        width: u32,
        height: u32,
        limit: u64,
    },
    #[error("frame {index} was asked for, and the image has {frames} frame(s)")]
    NoSuchFrame { index: u32, frames: u32 },
    #[error("{} image needs more memory to decode than allowed: {reason}", format.name())]
    OverMemoryLimit { format: FileFormat, reason: String },
    #[error("{} image uses a feature that is not supported: {reason}", format.name())]
    Unsupported { format: FileFormat, reason: String },
    #[error("{} image is corrupt or truncated: {reason}", format.name())]
    Corrupt { format: FileFormat, reason: String },
}

/// Why pixels could not be encoded. Every case is about the image (its size, mostly).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "{} cannot hold a {width}x{height} image: at most {max}x{max}",
        format.name()
    )]
    TooLarge {
        format: FileFormat,
        width: u32,
        height: u32,
        max: u32,
    },
    #[error("{} encoding failed: {reason}", format.name())]
    Failed { format: FileFormat, reason: String },
}

/// A decoded image and the format it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub image: Bitmap,
    pub format: FileFormat,
    /// The upright size of the stored image: bigger than `image` when [`decode_shrunk`] shrank
    /// it on load, the same otherwise.
    pub full_size: (u32, u32),
    /// How the stored pixels are laid out, as the decoder names it: `rgb8`, `rgba16`, `l8`,
    /// `cmyk8`…
    pub colour_type: String,
    /// The EXIF block (its TIFF structure, without JPEG's `Exif\0\0` prefix); empty if none.
    pub exif: Vec<u8>,
    /// The XMP packet; empty if none (or in an AVIF, whose metadata items are not read).
    pub xmp: Vec<u8>,
    /// The embedded ICC profile, when it was left unapplied for the output to embed (see
    /// [`DecodeOptions::keep_icc`]).
    pub icc: Option<Vec<u8>>,
    /// What was done with the embedded ICC profile (see [`colour::manage`]); `None` without
    /// one.
    pub colour_profile: Option<colour::Applied>,
}

/// The input's metadata, for an output whose encoding keeps some (see [`encode_carrying`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputMetadata {
    /// The EXIF block, without JPEG's `Exif\0\0` prefix.
    pub exif: Vec<u8>,
    pub xmp: Vec<u8>,
    /// The ICC profile the pixels are in; `None` when they are sRGB.
    pub icc: Option<Vec<u8>>,
}

/// How to decode, beyond the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// A JPEG may be shrunk on load to no less than this (see [`decode_shrunk`]).
    pub min_size: (u32, u32),
    /// Leave an embedded RGB profile unapplied and return it in [`Decoded::icc`], for an
    /// output that embeds it (see `Encoding::embeds_icc`).
    pub keep_icc: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            min_size: (u32::MAX, u32::MAX),
            keep_icc: false,
        }
    }
}

/// The format the bytes are in, from their signature; `None` if not one we read.
pub fn detect_format(input: &[u8]) -> Option<FileFormat> {
    Some(match image::guess_format(input).ok()? {
        image::ImageFormat::Jpeg => FileFormat::Jpeg,
        image::ImageFormat::Png => FileFormat::Png,
        image::ImageFormat::WebP => FileFormat::Webp,
        image::ImageFormat::Gif => FileFormat::Gif,
        image::ImageFormat::Bmp => FileFormat::Bmp,
        image::ImageFormat::Tiff => FileFormat::Tiff,
        image::ImageFormat::Avif => FileFormat::Avif,
        _ => return None,
    })
}

/// What an image's header says, read by [`probe`] without decoding any pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: FileFormat,
    /// The upright size, as decoding returns it: an EXIF orientation that turns the image a
    /// quarter turn swaps the stored width and height.
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel of the buffer the decoder fills, at the stored depth: 3 for a JPEG
    /// (libjpeg-turbo writes RGB, grey ones too; 4 for CMYK), 8 for a 16-bit RGBA PNG, 4 for a
    /// palette PNG (expanded to RGBA).
    pub bytes_per_pixel: u32,
    /// Whether the layout has alpha. Decoding drops an alpha channel that is opaque everywhere,
    /// which the header cannot tell.
    pub alpha: bool,
    /// Memory the decoder needs beside its buffer, when the header shows it: the whole
    /// image's DCT coefficients for a progressive JPEG. 0 otherwise.
    pub decoder_bytes: u64,
    /// Frames of an animated GIF or WebP; 1 for a still image.
    pub frames: u32,
}

impl Probe {
    /// What the budget's estimate needs of the header.
    pub fn input(&self) -> Input {
        Input {
            width: self.width,
            height: self.height,
            bytes_per_pixel: self.bytes_per_pixel,
            alpha: self.alpha,
            format: Some(self.format),
            decoder_bytes: Some(self.decoder_bytes),
        }
    }
}

/// Reads `input`'s header with the decoder [`decode`] would use (libjpeg-turbo for JPEG,
/// image's for the rest), without decoding pixels and without any size limit; `None` if it is
/// not a supported image or its header does not read. Never panics.
pub fn probe(input: &[u8]) -> Option<Probe> {
    let format = detect_format(input)?;
    // The header parsers are as exposed to hostile bytes as the decoders.
    panic::catch_unwind(AssertUnwindSafe(|| {
        if format == FileFormat::Jpeg
            && let Some(probe) = probe_jpeg(input)
        {
            return Some(probe);
        }
        if format == FileFormat::Avif {
            let (width, height, alpha) = avif::dimensions(input)?;
            return Some(Probe {
                format,
                width,
                height,
                bytes_per_pixel: if alpha { 4 } else { 3 },
                alpha,
                decoder_bytes: 0,
                frames: 1,
            });
        }
        probe_as(input, format)
    }))
    .ok()
    .flatten()
}

/// [`probe`] through libjpeg-turbo.
fn probe_jpeg(input: &[u8]) -> Option<Probe> {
    use mozjpeg::{ColorSpace, Decompress, Marker};
    const MARKERS: &[Marker] = &[Marker::APP(1)];
    let decoder =
        panic::catch_unwind(|| Decompress::builder().with_markers(MARKERS).from_mem(input))
            .ok()?
            .ok()?;
    // A CMYK JPEG's buffer holds four samples a pixel, converted to RGB after.
    let bytes_per_pixel = match decoder.color_space() {
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => 4,
        _ => 3,
    };
    let (width, height) = (
        u32::try_from(decoder.width()).ok()?,
        u32::try_from(decoder.height()).ok()?,
    );
    let exif = decoder
        .markers()
        .filter(|marker| marker.marker == Marker::APP(1))
        .find_map(|marker| marker.data.strip_prefix(b"Exif\0\0"))
        .unwrap_or_default();
    let orientation = Orientation::from_exif_chunk(exif).unwrap_or(Orientation::NoTransforms);
    let (width, height) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    // A progressive JPEG is decoded from a buffer of every block's coefficients (64 i16s per
    // 8x8 block of each component, rounded up to whole MCUs), which libjpeg-turbo allocates
    // with malloc beside the pixels; a baseline one needs one row of MCUs.
    let decoder_bytes = if jpeg_is_progressive(input) {
        let components = decoder.components();
        let max = |factor: fn(&mozjpeg::CompInfo) -> i32| {
            components.iter().map(factor).max().unwrap_or(1).max(1)
        };
        let (max_h, max_v) = (max(|c| c.h_samp_factor), max(|c| c.v_samp_factor));
        components
            .iter()
            .map(|c| {
                let round = |blocks: u32, factor: i32, max: i32| {
                    // libjpeg rounds each component's blocks up to its sampling factor.
                    let factor = u64::from(factor.clamp(1, max).unsigned_abs());
                    u64::from(blocks).div_ceil(factor) * factor
                };
                round(c.width_in_blocks, c.h_samp_factor, max_h)
                    * round(c.height_in_blocks, c.v_samp_factor, max_v)
                    * 128
            })
            .sum()
    } else {
        0
    };
    Some(Probe {
        format: FileFormat::Jpeg,
        width,
        height,
        bytes_per_pixel,
        alpha: false,
        decoder_bytes,
        frames: 1,
    })
}

/// [`probe`] through image's decoder for `format`.
fn probe_as(input: &[u8], format: FileFormat) -> Option<Probe> {
    let mut reader = ImageReader::with_format(Cursor::new(input), image_format(format));
    // Only the header is read; the limits apply when decoding.
    reader.no_limits();
    let mut decoder = reader.into_decoder().ok()?;
    let (width, height) = decoder.dimensions();
    let colour = decoder.color_type();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Some(Probe {
        format,
        width,
        height,
        bytes_per_pixel: u32::from(colour.bytes_per_pixel()),
        alpha: colour.has_alpha(),
        decoder_bytes: 0,
        frames: crate::animation::frame_count(input, format).frames,
    })
}

/// Whether a JPEG's frame header (the first SOFn marker) says progressive: SOF2, SOF6, SOF10
/// or SOF14. Walks the segments by their lengths, as [`jpeg_reaches_end`] does.
fn jpeg_is_progressive(data: &[u8]) -> bool {
    let mut i = 2;
    while let Some((marker, at)) = next_jpeg_marker(data, i) {
        match marker {
            0xC2 | 0xC6 | 0xCA | 0xCE => return true,
            // The other frame types, or scan data before any frame header.
            0xC0 | 0xC1 | 0xC3 | 0xC5 | 0xC7 | 0xC9 | 0xCB | 0xCD | 0xCF | 0xDA | 0xD9 => {
                return false;
            }
            0x01 | 0xD0..=0xD8 => i = at,
            _ => match jpeg_segment_end(data, at) {
                Some(end) => i = end,
                None => return false,
            },
        }
    }
    false
}

/// The next marker at or after `i`, and where the bytes after it start. Stray bytes between
/// segments are tolerated, as the decoder does, and fill bytes (repeated 0xFF) skipped.
fn next_jpeg_marker(data: &[u8], i: usize) -> Option<(u8, usize)> {
    let mut i = i + memchr::memchr(0xFF, data.get(i..)?)?;
    while data.get(i) == Some(&0xFF) {
        i += 1;
    }
    Some((*data.get(i)?, i + 1))
}

/// Where a segment whose length field starts at `i` ends; the length counts its own two
/// bytes. `None` for a cut or broken length.
fn jpeg_segment_end(data: &[u8], i: usize) -> Option<usize> {
    let &[hi, lo] = data.get(i..i + 2)? else {
        return None;
    };
    let length = usize::from(u16::from_be_bytes([hi, lo]));
    (length >= 2).then_some(i + length)
}

/// Decodes the first frame of `input` to 8-bit RGB or RGBA, within `limits`.
pub fn decode(input: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    decode_shrunk(input, limits, (u32::MAX, u32::MAX))
}

/// Like [`decode`], but a JPEG may come out smaller: scaled by the largest of 1/8, 1/4 and 1/2
/// whose upright size is still at least `min_size` (width, height; 0 means any), by scaling
/// the inverse DCT while decoding. That is a block average (1/8) or a low-pass of each 8x8 block
/// (1/2, 1/4), so callers that want a good downscale leave headroom for a real resampling
/// filter after it. Other formats, and CMYK JPEGs, decode at full size.
///
/// The pixel limit applies to the stored size, as for [`decode`]: shrinking on load is a
/// speed-up, not a way to accept bigger images.
pub fn decode_shrunk(
    input: &[u8],
    limits: &Limits,
    min_size: (u32, u32),
) -> Result<Decoded, DecodeError> {
    decode_with(
        input,
        limits,
        &DecodeOptions {
            min_size,
            keep_icc: false,
        },
    )
}

/// [`decode_shrunk`], with the ICC profile kept unapplied when `options` says so.
pub fn decode_with(
    input: &[u8],
    limits: &Limits,
    options: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let bytes = input.len() as u64;
    if bytes > limits.max_input_bytes {
        return Err(DecodeError::InputTooLarge {
            bytes,
            limit: limits.max_input_bytes,
        });
    }
    let format = detect_format(input).ok_or(DecodeError::NotAnImage)?;
    // The decoders are fuzzed but not proven; a panic on hostile bytes must fail this input
    // only, not take down the worker and every image it holds.
    panic::catch_unwind(AssertUnwindSafe(|| {
        if format == FileFormat::Avif {
            let avif::Still {
                mut image,
                colour_type,
                icc,
                exif,
                xmp,
            } = avif::decode(input, limits)?;
            let (colour_profile, icc) = manage_colour(&mut image, icc, options.keep_icc);
            return Ok(Decoded {
                full_size: (image.width(), image.height()),
                image,
                format,
                colour_type,
                exif,
                xmp,
                icc,
                colour_profile,
            });
        }
        if format != FileFormat::Jpeg {
            return decode_as(input, format, limits, options.keep_icc);
        }
        match decode_jpeg(input, limits, options)? {
            Some(decoded) => Ok(decoded),
            None => {
                // The fallback decoder names the colour type it converted to, not the file's.
                let mut decoded = decode_as(input, format, limits, options.keep_icc)?;
                decoded.colour_type = "cmyk8".into();
                Ok(decoded)
            }
        }
    }))
    .map_err(|_| crashed(format))?
}

/// What a decoder's panic on hostile bytes becomes: this input's failure, not the worker's.
pub(crate) fn crashed(format: FileFormat) -> DecodeError {
    DecodeError::Corrupt {
        format,
        reason: "the decoder crashed on this input".into(),
    }
}

/// Decodes a JPEG with libjpeg-turbo, shrunk on load as [`decode_shrunk`] says. A CMYK or
/// YCCK JPEG with a CMYK profile is converted to sRGB through it; `None` for one without,
/// which image's decoder then converts by formula.
fn decode_jpeg(
    input: &[u8],
    limits: &Limits,
    options: &DecodeOptions,
) -> Result<Option<Decoded>, DecodeError> {
    use mozjpeg::{ColorSpace, Decompress, Marker};
    let format = FileFormat::Jpeg;
    // libjpeg reports fatal errors by unwinding with its message (and no panic hook): catch
    // them here to keep the message.
    let caught = |payload: Box<dyn std::any::Any + Send>| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the decoder crashed on this input");
        let message = message.trim_start_matches("libjpeg fatal error: ");
        if message.starts_with("Unsupported") || message.contains("not supported") {
            DecodeError::Unsupported {
                format,
                reason: reason(&message.to_lowercase()),
            }
        } else {
            DecodeError::Corrupt {
                format,
                reason: reason(&message.to_lowercase()),
            }
        }
    };
    let io_error = |err: std::io::Error| DecodeError::Corrupt {
        format,
        reason: reason(&err),
    };
    // APP1 holds the EXIF block with the orientation and the XMP packet, APP2 the ICC
    // profile, APP14 Adobe's marker, which says a CMYK image's samples are inverted.
    const MARKERS: &[Marker] = &[Marker::APP(1), Marker::APP(2), Marker::APP(14)];
    // Reading the header allocates only per-component tables, never pixels.
    let mut decoder =
        panic::catch_unwind(|| Decompress::builder().with_markers(MARKERS).from_mem(input))
            .map_err(caught)?
            .map_err(io_error)?;
    let (width, height) = (decoder.width(), decoder.height());
    let (width, height) = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );
    check_pixels(width, height, limits)?;
    if !jpeg_reaches_end(input) {
        // libjpeg, like browsers, fills missing rows with grey; we would rather fail than
        // store a half-grey result as if it were done.
        return Err(truncated_jpeg());
    }
    let app1 = |prefix: &[u8]| {
        decoder
            .markers()
            .filter(|marker| marker.marker == Marker::APP(1))
            .find_map(|marker| marker.data.strip_prefix(prefix))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    let exif = app1(b"Exif\0\0");
    let xmp = app1(XMP_APP1);
    let mut icc = jpeg_icc_profile(
        decoder
            .markers()
            .filter_map(|marker| (marker.marker == Marker::APP(2)).then_some(marker.data)),
    );
    let cmyk = matches!(
        decoder.color_space(),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
    );
    let colour_type = match decoder.color_space() {
        _ if cmyk => "cmyk8",
        ColorSpace::JCS_GRAYSCALE => "l8",
        _ => "rgb8",
    };
    let adobe = decoder
        .markers()
        .any(|marker| marker.marker == Marker::APP(14) && marker.data.starts_with(b"Adobe"));
    // Without a CMYK profile that converts, a CMYK JPEG goes to image's decoder, which
    // converts by formula.
    let to_srgb = if cmyk {
        match icc.take().map(|icc| colour::CmykToSrgb::new(&icc, adobe)) {
            Some(Ok(transform)) => Some(transform),
            _ => return Ok(None),
        }
    } else {
        None
    };
    // A broken EXIF block should not fail an image whose pixels are fine.
    let orientation = Orientation::from_exif_chunk(&exif).unwrap_or(Orientation::NoTransforms);
    let full_size = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    let shrink = jpeg_shrink(full_size, options.min_size);
    decoder.scale(8 / shrink);
    let pixels = panic::catch_unwind(AssertUnwindSafe(move || {
        let mut started = if cmyk {
            // libjpeg turns YCCK into CMYK; the profile takes it from there.
            decoder.to_colorspace(ColorSpace::JCS_CMYK)?
        } else {
            decoder.rgb()?
        };
        let size = (started.width(), started.height());
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok::<_, std::io::Error>((size, pixels))
    }))
    .map_err(caught)?
    .map_err(io_error)?;
    let ((w, h), mut pixels) = pixels;
    let mut colour_profile = None;
    if let Some(to_srgb) = to_srgb {
        pixels = to_srgb.convert(&pixels);
        colour_profile = Some(colour::Applied::Converted(to_srgb.name));
    }
    let image = u32::try_from(w)
        .ok()
        .zip(u32::try_from(h).ok())
        .and_then(|(w, h)| image::RgbImage::from_raw(w, h, pixels))
        .ok_or_else(|| DecodeError::Corrupt {
            format,
            reason: "the decoder returned fewer pixels than the image has".into(),
        })?;
    let mut image = to_bitmap(DynamicImage::ImageRgb8(image), orientation).ok_or_else(|| {
        DecodeError::Corrupt {
            format,
            reason: "the image has no pixels".into(),
        }
    })?;
    let mut kept = None;
    if let Some(icc) = icc {
        let (applied, embed) = colour::manage(&mut image, icc, options.keep_icc);
        colour_profile = Some(applied);
        kept = embed;
    }
    Ok(Some(Decoded {
        image,
        format,
        full_size,
        colour_type: colour_type.into(),
        exif,
        xmp,
        icc: kept,
        colour_profile,
    }))
}

/// The ICC profile of a JPEG, from its APP2 markers: `ICC_PROFILE\0`, the chunk's number
/// (from 1), the count of chunks, then that chunk of the profile. `None` without a profile,
/// or with chunks missing (a profile cut short is not one to apply).
fn jpeg_icc_profile<'a>(app2: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut chunks: Vec<(u8, u8, &[u8])> = app2
        .filter_map(|data| data.strip_prefix(b"ICC_PROFILE\0"))
        .filter_map(|data| match data {
            [number, count, chunk @ ..] => Some((*number, *count, chunk)),
            _ => None,
        })
        .collect();
    chunks.sort_by_key(|&(number, ..)| number);
    let count = chunks.first()?.1;
    let complete = chunks.len() == usize::from(count)
        && chunks
            .iter()
            .enumerate()
            .all(|(i, &(number, n, _))| usize::from(number) == i + 1 && n == count);
    complete.then(|| {
        chunks
            .iter()
            .flat_map(|&(.., chunk)| chunk)
            .copied()
            .collect()
    })
}

/// Orientations that turn the stored image a quarter turn, so its width is the upright height.
fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

pub(crate) fn check_pixels(width: u32, height: u32, limits: &Limits) -> Result<(), DecodeError> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

fn truncated_jpeg() -> DecodeError {
    DecodeError::Corrupt {
        format: FileFormat::Jpeg,
        reason: "the data ends before the end-of-image marker".into(),
    }
}

fn image_format(format: FileFormat) -> image::ImageFormat {
    match format {
        FileFormat::Jpeg => image::ImageFormat::Jpeg,
        FileFormat::Png => image::ImageFormat::Png,
        FileFormat::Webp => image::ImageFormat::WebP,
        FileFormat::Gif => image::ImageFormat::Gif,
        FileFormat::Bmp => image::ImageFormat::Bmp,
        FileFormat::Tiff => image::ImageFormat::Tiff,
        FileFormat::Avif => image::ImageFormat::Avif,
    }
}

fn decode_as(
    input: &[u8],
    format: FileFormat,
    limits: &Limits,
    keep_icc: bool,
) -> Result<Decoded, DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(input), image_format(format));
    let mut image_limits = image::Limits::default();
    // Second guard, for allocations the header does not predict. 8 bytes per pixel covers the
    // widest buffer a decoder may return for an image within max_pixels (16-bit RGBA).
    let max_alloc = limits.max_pixels.saturating_mul(8);
    image_limits.max_alloc = Some(max_alloc);
    reader.limits(image_limits);
    // Building the decoder reads the header, not the pixel data.
    let mut decoder = reader
        .into_decoder()
        .map_err(|err| decode_error(format, err))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    // What `ImageReader::decode` checks, which we bypass to read the orientation.
    if decoder.total_bytes() > max_alloc {
        return Err(DecodeError::OverMemoryLimit {
            format,
            reason: format!(
                "{} bytes of pixels, over {max_alloc}",
                decoder.total_bytes()
            ),
        });
    }
    if format == FileFormat::Jpeg && !jpeg_reaches_end(input) {
        // As in decode_jpeg: no half-grey results.
        return Err(truncated_jpeg());
    }
    let colour_type = format!("{:?}", decoder.original_color_type()).to_lowercase();
    let InputMetadata { exif, xmp, mut icc } = embedded_metadata(&mut decoder);
    if format == FileFormat::Tiff {
        icc = tiff_icc(input);
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = match (format == FileFormat::Webp)
        .then(|| decode_webp(input))
        .flatten()
    {
        Some(image) => image,
        None => DynamicImage::from_decoder(decoder).map_err(|err| decode_error(format, err))?,
    };
    let mut image = to_bitmap(image, orientation).ok_or_else(|| DecodeError::Corrupt {
        format,
        reason: "the image has no pixels".into(),
    })?;
    // A CMYK JPEG without its profile lands here: the profile does not fit RGB pixels.
    let (colour_profile, icc) = manage_colour(&mut image, icc, keep_icc);
    Ok(Decoded {
        full_size: (image.width(), image.height()),
        image,
        format,
        colour_type,
        exif,
        xmp,
        icc,
        colour_profile,
    })
}

/// The EXIF (without JPEG's `Exif\0\0` prefix), XMP and ICC profile `decoder` found in its
/// header. What does not read is left out: a broken block is no reason to fail pixels that
/// are fine.
pub(crate) fn embedded_metadata(decoder: &mut dyn ImageDecoder) -> InputMetadata {
    let mut exif = decoder.exif_metadata().ok().flatten().unwrap_or_default();
    if exif.starts_with(b"Exif\0\0") {
        exif.drain(..6);
    }
    InputMetadata {
        exif,
        xmp: decoder.xmp_metadata().ok().flatten().unwrap_or_default(),
        icc: decoder.icc_profile().ok().flatten(),
    }
}

/// A TIFF's ICC profile, read with the tiff crate itself. Through image's decoder, whose
/// limits cap every tag's values at the image's own pixel bytes (the tiff crate counts each
/// value as a 32-byte enum), a small image's profile was dropped unread: an 80x50 Adobe RGB
/// TIFF lost its 580-byte profile. Here the cap is the biggest profile we apply.
fn tiff_icc(input: &[u8]) -> Option<Vec<u8>> {
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size =
        colour::MAX_ICC_BYTES.min(input.len()) * std::mem::size_of::<tiff::decoder::ifd::Value>();
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(input))
        .ok()?
        .with_limits(limits);
    decoder
        .get_tag_u8_vec(tiff::tags::Tag::IccProfile)
        .ok()
        .filter(|icc| !icc.is_empty())
}

/// [`colour::manage`] for an image that may have no profile: what was done, and the profile
/// when it is kept for the output to embed.
pub(crate) fn manage_colour(
    image: &mut Bitmap,
    icc: Option<Vec<u8>>,
    keep: bool,
) -> (Option<colour::Applied>, Option<Vec<u8>>) {
    match icc {
        Some(icc) => {
            let (applied, kept) = colour::manage(image, icc, keep);
            (Some(applied), kept)
        }
        None => (None, None),
    }
}

/// A still lossy WebP decoded by libwebp: `scripts/bench-compare` measured 133 ms for a 4K
/// q80 image against 282 ms for the image crate's pure-Rust decoder (libvips: 193 ms).
/// Lossless WebP stays with the image crate, faster there (128 ms against libwebp's 150).
/// `None` for what it does not take (lossless, an animation, data it refuses): the image
/// crate's decoder then decodes it, or names the problem. Called after the header's size was
/// checked against the limits.
fn decode_webp(input: &[u8]) -> Option<DynamicImage> {
    let features = webp::BitstreamFeatures::new(input)?;
    if matches!(features.format(), Some(webp::BitstreamFormat::Lossless)) {
        return None;
    }
    let decoded = webp::Decoder::new(input).decode()?;
    let (width, height) = (decoded.width(), decoded.height());
    if decoded.is_alpha() {
        image::RgbaImage::from_raw(width, height, decoded.to_vec()).map(DynamicImage::ImageRgba8)
    } else {
        image::RgbImage::from_raw(width, height, decoded.to_vec()).map(DynamicImage::ImageRgb8)
    }
}

/// 8-bit RGB or RGBA, upright; other layouts are converted (grey expands, 16 bits round to 8).
///
/// Converted before `orientation` is applied: a quarter turn copies the image, and the 8-bit
/// copy is the smaller one (half of a 16-bit RGBA buffer's size). The two steps commute, so the
/// pixels are the same either way.
///
/// An alpha channel that is opaque everywhere is dropped: GIF always decodes as RGBA, many
/// PNGs carry a useless alpha, and every op is faster on three channels than on four. The RGB
/// bytes are packed into the RGBA buffer's front, so no second image is allocated.
pub(crate) fn to_bitmap(image: DynamicImage, orientation: Orientation) -> Option<Bitmap> {
    let mut image = if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.into_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.into_rgb8())
    };
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let DynamicImage::ImageRgba8(rgba) = image else {
        return Bitmap::new(width, height, false, image.into_rgb8().into_raw());
    };
    let mut data = rgba.into_raw();
    if !data.chunks_exact(4).all(|pixel| pixel[3] == u8::MAX) {
        return Bitmap::new(width, height, true, data);
    }
    let pixels = data.len() / 4;
    // Pixel i moves from 4i to 3i, never past bytes not yet read.
    for i in 0..pixels {
        let (from, to) = (4 * i, 3 * i);
        data.copy_within(from..from + 3, to);
    }
    data.truncate(pixels * 3);
    data.shrink_to_fit();
    Bitmap::new(width, height, false, data)
}

/// Whether a JPEG's marker structure reaches its end-of-image marker, i.e. it was not cut
/// short. Walks the segments by their lengths (so EXIF thumbnails, which hold their own EOI,
/// are skipped) and scans entropy-coded data for the next real marker. Bytes after the EOI
/// (phone "motion photo" videos, vendor trailers) are allowed.
fn jpeg_reaches_end(data: &[u8]) -> bool {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    if !data.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        let Some((marker, at)) = next_jpeg_marker(data, i) else {
            return false;
        };
        match marker {
            EOI => return true,
            // Markers without a length: TEM, RSTn, and a stray SOI.
            0x01 | 0xD0..=0xD8 => {
                i = at;
                continue;
            }
            _ => {}
        }
        let Some(end) = jpeg_segment_end(data, at) else {
            return false;
        };
        i = end;
        if marker == SOS {
            // Entropy-coded data runs to the first 0xFF that is not stuffing (FF 00), a
            // restart marker (FF D0..D7) or fill before one of those.
            loop {
                let Some(offset) = data.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
                    return false;
                };
                let start = i + offset;
                let mut next = start + 1;
                while data.get(next) == Some(&0xFF) {
                    next += 1;
                }
                match data.get(next) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i = next + 1,
                    Some(_) => {
                        i = start;
                        break;
                    }
                }
            }
        }
    }
}

pub(crate) fn decode_error(format: FileFormat, err: ImageError) -> DecodeError {
    match err {
        ImageError::Limits(err) => DecodeError::OverMemoryLimit {
            format,
            reason: reason(&err),
        },
        ImageError::Unsupported(err) => DecodeError::Unsupported {
            format,
            reason: reason(&err),
        },
        // Decoding, parameter and io errors (an early end of data is an io error).
        other => DecodeError::Corrupt {
            format,
            reason: reason(&other),
        },
    }
}

/// A decoder's message as one line: some end theirs with a newline.
fn reason(err: &dyn std::fmt::Display) -> String {
    err.to_string().trim().replace('\n', "; ")
}

/// Encodes `image` as `format` with default options; `quality` (1..=100) is used by JPEG only.
pub fn encode(image: &Bitmap, format: FileFormat, quality: u8) -> Result<Vec<u8>, EncodeError> {
    encode_with(
        image,
        &Encoding {
            quality,
            ..Encoding::new(format)
        },
    )
}

/// Encodes as `encoding` says, with no metadata.
pub fn encode_with(image: &Bitmap, encoding: &Encoding) -> Result<Vec<u8>, EncodeError> {
    encode_carrying(image, encoding, &InputMetadata::default())
}

/// Encodes as `encoding` says, carrying what its `metadata` and `keep_icc` keep of `input`
/// (see [`crate::metadata`]).
pub fn encode_carrying(
    image: &Bitmap,
    encoding: &Encoding,
    input: &InputMetadata,
) -> Result<Vec<u8>, EncodeError> {
    let outgoing = Outgoing::new(encoding, input);
    let format = encoding.format;
    let (width, height) = (image.width(), image.height());
    check_encodable(format, width, height)?;
    let color = if image.has_alpha() {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    let failed = |reason: String| EncodeError::Failed { format, reason };
    // Room for a well-compressed photo; the Vec grows if needed.
    let mut out = Vec::with_capacity(image.data().len() / 8);
    match format {
        FileFormat::Jpeg => encode_jpeg(image, encoding, &outgoing, &mut out).map_err(failed)?,
        FileFormat::Png => {
            let icc = outgoing.icc.as_deref().unwrap_or_default();
            match encoding.png_deflate_level() {
                Some(level) => {
                    out = png_writer::encode(image, level, icc, &outgoing.exif).map_err(failed)?;
                }
                // fdeflate, through the png crate.
                None => {
                    let mut encoder = PngEncoder::new_with_quality(
                        &mut out,
                        CompressionType::Fast,
                        PngFilter::Adaptive,
                    );
                    encoder
                        .set_icc_profile(icc.to_vec())
                        .and_then(|()| encoder.set_exif_metadata(outgoing.exif.clone()))
                        .map_err(|err| failed(err.to_string()))?;
                    encoder
                        .write_image(image.data(), width, height, color)
                        .map_err(|err| failed(err.to_string()))?;
                }
            }
            out = metadata::png_with_xmp(out, &outgoing.xmp);
        }
        FileFormat::Webp => {
            if encoding.lossless {
                out = encode_webp_lossless(image).map_err(failed)?;
            } else {
                out = encode_webp_lossy(image, encoding.quality).map_err(failed)?;
            }
            if !outgoing.is_empty() {
                out = metadata::webp_with(&out, &outgoing).map_err(failed)?;
            }
        }
        FileFormat::Gif => {
            out = gif_writer::encode([(image, 0)], width, height, None).map_err(failed)?
        }
        FileFormat::Bmp => BmpEncoder::new(&mut out)
            .write_image(image.data(), width, height, color)
            .map_err(|err| failed(err.to_string()))?,
        FileFormat::Tiff => {
            let mut encoder = TiffEncoder::new(Cursor::new(&mut out));
            if let Some(icc) = &outgoing.icc {
                encoder
                    .set_icc_profile(icc.clone())
                    .map_err(|err| failed(err.to_string()))?;
            }
            encoder
                .write_image(image.data(), width, height, color)
                .map_err(|err| failed(err.to_string()))?
        }
        FileFormat::Avif => {
            let icc = outgoing.icc.as_deref();
            out = avif::encode(image, encoding, &outgoing.exif, icc, &outgoing.xmp)
                .map_err(failed)?;
        }
    }
    Ok(out)
}

/// Whether `format` can hold a `width` x `height` image.
pub(crate) fn check_encodable(
    format: FileFormat,
    width: u32,
    height: u32,
) -> Result<(), EncodeError> {
    let max = match format {
        // AV1 frames are at most 65536 on a side; the HEIF image item's too.
        FileFormat::Jpeg | FileFormat::Gif | FileFormat::Avif => u32::from(u16::MAX),
        FileFormat::Webp => 16384,
        FileFormat::Png | FileFormat::Bmp | FileFormat::Tiff => u32::MAX,
    };
    if width > max || height > max {
        return Err(EncodeError::TooLarge {
            format,
            width,
            height,
            max,
        });
    }
    Ok(())
}

fn encode_jpeg(
    image: &Bitmap,
    encoding: &Encoding,
    outgoing: &Outgoing,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    // Checked by the caller; kept as errors so a future caller cannot make this panic.
    let width = u16::try_from(image.width()).map_err(|err| err.to_string())?;
    let height = u16::try_from(image.height()).map_err(|err| err.to_string())?;
    let flattened;
    let rgb = if image.has_alpha() {
        flattened = flatten_on_white(image.data());
        &flattened
    } else {
        image.data()
    };
    let quality = encoding.quality.clamp(1, 100);
    if encoding.progressive {
        // libjpeg-turbo's progressive mode optimises Huffman tables in a second pass and took
        // 50 ms for 1920x1080 against jpeg-encoder's 29 ms.
        let mut encoder = jpeg_encoder::Encoder::new(out, quality);
        encoder.set_progressive(true);
        for segment in outgoing.jpeg_app1() {
            encoder
                .add_app_segment(1, segment)
                .map_err(|err| err.to_string())?;
        }
        for segment in outgoing.jpeg_icc() {
            encoder
                .add_app_segment(2, segment)
                .map_err(|err| err.to_string())?;
        }
        return encoder
            .encode(rgb, width, height, jpeg_encoder::ColorType::Rgb)
            .map_err(|err| err.to_string());
    }
    let buffer = std::mem::take(out);
    // libjpeg reports errors by unwinding (see decode_jpeg).
    let encoded = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        // Plain libjpeg-turbo: mozjpeg's trellis quantisation and scan search make files a
        // little smaller at several times the time.
        compress.set_fastest_defaults();
        compress.set_size(usize::from(width), usize::from(height));
        compress.set_quality(f32::from(quality));
        // 4:2:0 chroma below quality 90 (libjpeg's default), full chroma from 90 up.
        if quality >= 90 {
            compress.set_chroma_sampling_pixel_sizes((1, 1), (1, 1));
        }
        let mut started = compress.start_compress(buffer)?;
        for segment in outgoing.jpeg_app1() {
            started.write_marker(mozjpeg::Marker::APP(1), &segment);
        }
        for segment in outgoing.jpeg_icc() {
            started.write_marker(mozjpeg::Marker::APP(2), &segment);
        }
        started.write_scanlines(rgb)?;
        started.finish()
    }));
    *out = match encoded {
        Ok(result) => result.map_err(|err| err.to_string())?,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or("the encoder crashed");
            return Err(reason(&message.trim_start_matches("libjpeg fatal error: ")));
        }
    };
    Ok(())
}

/// Lossy WebP by libwebp, alpha kept (WebP has an alpha plane). Single-threaded and without
/// metadata chunks, so the same pixels give the same bytes.
fn encode_webp_lossy(image: &Bitmap, quality: u8) -> Result<Vec<u8>, String> {
    let encoder = webp_encoder(image);
    let quality = f32::from(quality.clamp(1, 100));
    let memory = encoder
        .encode_simple(false, quality)
        .map_err(|err| format!("{err:?}").to_lowercase())?;
    Ok(memory.to_vec())
}

/// Lossless WebP by libwebp at method 2 and quality 0 (its lossless search effort). On the
/// 1920-wide reference photo, through the same libwebp in pyvips: 0.4 % bigger than libvips'
/// default (method 4, quality 75) in 0.59× its time; the image crate's one-pass encoder took
/// 17 ms but was 12 % bigger, past the +5 % bound (BENCHMARKS.md, "Per format"). `exact`
/// keeps the colour under transparent pixels, so the round trip is exact.
fn encode_webp_lossless(image: &Bitmap) -> Result<Vec<u8>, String> {
    let encoder = webp_encoder(image);
    let mut config =
        webp::WebPConfig::new().map_err(|()| "libwebp refused its default configuration")?;
    config.lossless = 1;
    config.method = 2;
    config.quality = 0.0;
    config.exact = 1;
    let memory = encoder
        .encode_advanced(&config)
        .map_err(|err| format!("{err:?}").to_lowercase())?;
    Ok(memory.to_vec())
}

/// libwebp's encoder over the bitmap's pixels, RGB or RGBA as it has them.
fn webp_encoder(image: &Bitmap) -> webp::Encoder<'_> {
    let (width, height) = (image.width(), image.height());
    if image.has_alpha() {
        webp::Encoder::from_rgba(image.data(), width, height)
    } else {
        webp::Encoder::from_rgb(image.data(), width, height)
    }
}

/// RGBA to RGB composited over white: JPEG has no alpha, and white is what a transparent
/// image usually sits on in a page.
fn flatten_on_white(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for pixel in rgba.chunks_exact(4) {
        let alpha = u32::from(pixel[3]);
        for &channel in &pixel[..3] {
            // channel * a + 255 * (255 - a), divided by 255 with rounding.
            let blended = u32::from(channel) * alpha + 255 * (255 - alpha);
            rgb.push(((blended + 127) / 255) as u8);
        }
    }
    rgb
}

fn megapixels(pixels: u64) -> f64 {
    pixels as f64 / 1_000_000.0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pixelmesh_common::testing::png_chunk;

    use crate::testdata::{corpus, corpus_files, gradient};

    /// A well-formed PNG header claiming `width` x `height` RGB, followed by a few bytes of
    /// image data: far too little for the claimed size.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no interlace
        png_chunk(&mut png, b"IHDR", &ihdr);
        png_chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        png_chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn refuses_over_limit_pixels_from_the_header() {
        let png = png_claiming(100_000, 100_000);
        assert!(png.len() < 100);
        let err = decode(&png, &Limits::default()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                limit: 100_000_000
            }
        );
        assert_eq!(
            err.to_string(),
            "image is 100000x100000 (10000.0 megapixels), over the limit of 100.0 megapixels"
        );
        // Just over a tighter limit, too.
        let limits = Limits {
            max_pixels: 99,
            ..Limits::default()
        };
        let err = decode(&png_claiming(10, 10), &limits).unwrap_err();
        assert!(matches!(err, DecodeError::TooManyPixels { .. }), "{err}");
    }

    #[test]
    fn refuses_over_limit_input_bytes() {
        let limits = Limits {
            max_input_bytes: 10,
            ..Limits::default()
        };
        let err = decode(&[0u8; 11], &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input is 11 bytes, over the limit of 10 bytes"
        );
    }

    #[test]
    fn garbage_is_not_an_image() {
        for input in [&b""[..], b"hello world", &[0u8; 1000], &[0xff; 3]] {
            let err = decode(input, &Limits::default()).unwrap_err();
            assert_eq!(err, DecodeError::NotAnImage);
            assert_eq!(
                err.to_string(),
                "not a supported image (jpeg, png, webp, gif, bmp, tiff, avif)"
            );
        }
    }

    #[test]
    fn truncated_and_corrupt_inputs_are_errors_not_panics() {
        let jpeg = encode(&gradient(64, 48, false), FileFormat::Jpeg, 85).unwrap();
        // From 3 bytes on the signature says JPEG, so every cut must name the format.
        for cut in (3..jpeg.len()).step_by(7).chain([jpeg.len() - 1]) {
            let err = decode(&jpeg[..cut], &Limits::default()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("jpeg image is corrupt or truncated: "),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert_eq!(
            decode(&jpeg[..jpeg.len() - 2], &Limits::default())
                .unwrap_err()
                .to_string(),
            "jpeg image is corrupt or truncated: the data ends before the end-of-image marker"
        );
        let png = encode(&gradient(64, 48, true), FileFormat::Png, 85).unwrap();
        let err = decode(&png[..png.len() / 2], &Limits::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("png image is corrupt or truncated: "),
            "{err}"
        );
        // Flipped bytes in the middle of the data.
        let mut broken = png.clone();
        for byte in &mut broken[60..120] {
            *byte ^= 0x5a;
        }
        assert!(decode(&broken, &Limits::default()).is_err());
    }

    #[test]
    fn every_format_round_trips() {
        for alpha in [false, true] {
            let image = gradient(33, 17, alpha);
            for format in FileFormat::ALL {
                let bytes = encode(&image, format, 90).unwrap();
                assert_eq!(detect_format(&bytes), Some(format));
                let decoded = decode(&bytes, &Limits::default()).unwrap();
                assert_eq!(decoded.format, format);
                assert_eq!((decoded.image.width(), decoded.image.height()), (33, 17));
                // JPEG drops alpha; GIF keeps only on/off alpha but still decodes as RGBA.
                let keeps_alpha = alpha && format != FileFormat::Jpeg;
                assert_eq!(decoded.image.has_alpha(), keeps_alpha, "{format:?}");
                if matches!(
                    format,
                    FileFormat::Png | FileFormat::Webp | FileFormat::Bmp | FileFormat::Tiff
                ) {
                    assert_eq!(decoded.image, image, "{format:?} is lossless");
                }
            }
        }
    }

    /// The k-means palette: closer to the source than the NeuQuant one it replaced, the same
    /// bytes every time, and a few colours kept exactly (a palette has room for them all).
    #[test]
    fn an_opaque_gif_gets_a_close_deterministic_palette() {
        let image = smooth(160, 100);
        let gif = encode(&image, FileFormat::Gif, 90).unwrap();
        assert_eq!(encode(&image, FileFormat::Gif, 90).unwrap(), gif);
        let decoded = decode(&gif, &Limits::default()).unwrap().image;
        let diff = mean_abs_diff(&decoded, &image);
        let mut neuquant = Vec::new();
        image::codecs::gif::GifEncoder::new_with_speed(&mut neuquant, 10)
            .encode(image.data(), 160, 100, ExtendedColorType::Rgb8)
            .unwrap();
        let neuquant = decode(&neuquant, &Limits::default()).unwrap().image;
        let before = mean_abs_diff(&neuquant, &image);
        // 3.2 against NeuQuant's 5.2 on this gradient.
        assert!(diff < 4.0 && diff < before, "{diff}, NeuQuant {before}");

        let few: Vec<u8> = (0..64 * 64)
            .flat_map(|i| [[255, 0, 0], [0, 128, 255], [10, 200, 30]][i % 3])
            .collect();
        let few = Bitmap::new(64, 64, false, few).unwrap();
        let decoded = decode(
            &encode(&few, FileFormat::Gif, 90).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(decoded.image, few);
    }

    #[test]
    fn jpeg_from_rgba_is_flattened_on_white() {
        let transparent = Bitmap::new(16, 16, true, [0, 0, 0, 0].repeat(256)).unwrap();
        let bytes = encode(&transparent, FileFormat::Jpeg, 95).unwrap();
        let decoded = decode(&bytes, &Limits::default()).unwrap().image;
        assert!(!decoded.has_alpha());
        assert!(
            decoded.data().iter().all(|&v| v >= 250),
            "transparent became white"
        );
        assert_eq!(
            flatten_on_white(&[200, 100, 0, 255, 0, 0, 0, 128]),
            [200, 100, 0, 127, 127, 127]
        );
    }

    #[test]
    fn png_compression_is_lossless_and_more_effort_shrinks_the_file() {
        let image = decode(&test_data("kite-cmyk-320x200.png"), &Limits::default())
            .unwrap()
            .image;
        let mut sizes = Vec::new();
        for compression in 1..=9 {
            let encoding = Encoding {
                compression,
                ..Encoding::new(FileFormat::Png)
            };
            let png = encode_with(&image, &encoding).unwrap();
            let back = decode(&png, &Limits::default()).unwrap().image;
            assert_eq!(back.data(), image.data(), "compression {compression}");
            sizes.push(png.len());
        }
        // libdeflate (3-9) does better as the effort rises, though not at every step (its
        // levels 3 and 4 differ in how they search, not only how long); near-optimal parsing
        // (9) is the smallest of all, fdeflate (1, 2) included, which on a small smooth image
        // like this one beats libdeflate's greedy levels.
        assert_eq!(sizes.iter().min(), Some(&sizes[8]), "{sizes:?}");
        assert!(sizes[6] < sizes[5] && sizes[5] < sizes[2], "{sizes:?}");
    }

    #[test]
    fn lossy_webp_is_smaller_and_close() {
        for alpha in [false, true] {
            let image = smooth(200, 120);
            let image = if alpha {
                let rgba = image
                    .data()
                    .chunks_exact(3)
                    .enumerate()
                    .flat_map(|(i, p)| [p[0], p[1], p[2], if i % 200 < 100 { 255 } else { 60 }])
                    .collect();
                Bitmap::new(200, 120, true, rgba).unwrap()
            } else {
                image
            };
            let lossless = encode(&image, FileFormat::Webp, 80).unwrap();
            let encoding = Encoding {
                quality: 80,
                lossless: false,
                ..Encoding::new(FileFormat::Webp)
            };
            let lossy = encode_with(&image, &encoding).unwrap();
            assert_eq!(
                encode_with(&image, &encoding).unwrap(),
                lossy,
                "deterministic"
            );
            assert!(
                lossy.len() < lossless.len(),
                "{} >= {}",
                lossy.len(),
                lossless.len()
            );
            let decoded = decode(&lossy, &Limits::default()).unwrap();
            assert_eq!(decoded.format, FileFormat::Webp);
            assert_eq!(decoded.image.has_alpha(), alpha);
            let diff = mean_abs_diff(&decoded.image, &image);
            assert!(diff < 3.0, "alpha {alpha}: mean difference {diff}");
        }
    }

    /// A real profile from Debian's icc-profiles-free, which scripts/tools.sh installs.
    pub(crate) fn system_profile(name: &str) -> (std::path::PathBuf, Vec<u8>) {
        let path = std::path::Path::new("/usr/share/color/icc").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|err| {
            panic!(
                "{}: {err}; install icc-profiles-free (scripts/tools.sh)",
                path.display()
            )
        });
        (path, bytes)
    }

    /// `image` (RGB) as a PNG, with `icc` in its iCCP chunk when given.
    pub(crate) fn png_with_icc(image: &Bitmap, icc: Option<Vec<u8>>) -> Vec<u8> {
        use image::ImageEncoder as _;
        let mut out = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
        if let Some(icc) = icc {
            encoder.set_icc_profile(icc).unwrap();
        }
        encoder
            .write_image(
                image.data(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    /// The JPEG with `icc` in APP2 markers right after SOI, cut into `chunks` pieces.
    fn with_icc(jpeg: &[u8], icc: &[u8], chunks: usize) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let size = icc.len().div_ceil(chunks);
        for (i, chunk) in icc.chunks(size).enumerate() {
            let length = 2 + 12 + 2 + chunk.len();
            out.extend_from_slice(&[0xFF, 0xE2]);
            out.extend_from_slice(&(length as u16).to_be_bytes());
            out.extend_from_slice(b"ICC_PROFILE\0");
            out.extend_from_slice(&[i as u8 + 1, chunks as u8]);
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// What Little CMS's own `transicc` (liblcms2-utils) makes of each pixel of `image` from
    /// the profile at `path` to sRGB, relative colorimetric, rounded and clamped to 8 bits.
    fn transicc(path: &std::path::Path, image: &Bitmap) -> Bitmap {
        use std::io::Write as _;
        let mut child = std::process::Command::new("transicc")
            .args(["-i"])
            .arg(path)
            .args(["-o", "*sRGB", "-t", "1", "-n"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("transicc (liblcms2-utils; scripts/tools.sh installs it)");
        let mut input = String::new();
        for pixel in image.data().chunks_exact(3) {
            input.push_str(&format!("{} {} {}\n", pixel[0], pixel[1], pixel[2]));
        }
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        let data: Vec<u8> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let values: Vec<f64> = line
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                (values.len() == 3).then_some(values)
            })
            .flatten()
            .map(|value| value.round().clamp(0.0, 255.0) as u8)
            .collect();
        Bitmap::new(image.width(), image.height(), false, data).unwrap()
    }

    #[test]
    fn an_adobe_rgb_jpeg_comes_out_in_srgb_as_transicc_makes_it() {
        let (path, icc) = system_profile("compatibleWithAdobeRGB1998.icc");
        let plain = encode(&smooth(96, 64), FileFormat::Jpeg, 95).unwrap();
        // The profile split over two markers, as big profiles are.
        let tagged = with_icc(&plain, &icc, 2);
        let stored = decode(&plain, &Limits::default()).unwrap();
        assert_eq!(stored.colour_profile, None);
        let managed = decode(&tagged, &Limits::default()).unwrap();
        assert!(
            matches!(&managed.colour_profile, Some(colour::Applied::Converted(name)) if name.contains("Adobe")),
            "{:?}",
            managed.colour_profile
        );
        let expected = transicc(&path, &stored.image);
        let off = mean_abs_diff(&managed.image, &expected);
        assert!(off < 1.0, "mean difference from transicc {off}");
        // And the conversion is no rounding: these colours move.
        let moved = mean_abs_diff(&managed.image, &stored.image);
        assert!(moved > 3.0, "moved only {moved}");
    }

    #[test]
    fn a_png_with_an_icc_chunk_is_converted_too_and_srgb_is_left_alone() {
        let (path, icc) = system_profile("compatibleWithAdobeRGB1998.icc");
        let image = smooth(64, 48);
        let png = |profile: Option<Vec<u8>>| png_with_icc(&image, profile);
        let managed = decode(&png(Some(icc)), &Limits::default()).unwrap();
        assert!(matches!(
            managed.colour_profile,
            Some(colour::Applied::Converted(_))
        ));
        let off = mean_abs_diff(&managed.image, &transicc(&path, &image));
        assert!(off < 1.0, "mean difference from transicc {off}");

        let (_, srgb) = system_profile("sRGB.icc");
        let kept = decode(&png(Some(srgb)), &Limits::default()).unwrap();
        assert!(matches!(
            kept.colour_profile,
            Some(colour::Applied::Kept(_))
        ));
        assert_eq!(kept.image.data(), image.data());
    }

    #[test]
    fn a_corrupt_or_incomplete_icc_profile_never_fails_the_image() {
        let (_, icc) = system_profile("compatibleWithAdobeRGB1998.icc");
        let plain = encode(&smooth(32, 32), FileFormat::Jpeg, 90).unwrap();
        let pixels = decode(&plain, &Limits::default()).unwrap().image;

        let mut garbled = icc.clone();
        garbled[..128].fill(0x5A);
        let decoded = decode(&with_icc(&plain, &garbled, 1), &Limits::default()).unwrap();
        assert!(
            matches!(&decoded.colour_profile, Some(colour::Applied::Ignored(reason)) if reason.contains("not readable")),
            "{:?}",
            decoded.colour_profile
        );
        assert_eq!(decoded.image.data(), pixels.data());

        // One of two chunks missing: no profile at all.
        let two = with_icc(&plain, &icc, 2);
        let first_end = 2 + 2 + usize::from(u16::from_be_bytes([two[4], two[5]]));
        let mut second_only = two[..2].to_vec();
        second_only.extend_from_slice(&two[first_end..]);
        let decoded = decode(&second_only, &Limits::default()).unwrap();
        assert_eq!(decoded.colour_profile, None);
        assert_eq!(decoded.image.data(), pixels.data());
    }

    /// Small TIFFs, where image's decoder dropped the profile (see `tiff_icc`), and a big one.
    #[test]
    fn a_tiffs_profile_is_read_whatever_the_image_size() {
        let (_, icc) = system_profile("compatibleWithAdobeRGB1998.icc");
        for (width, height) in [(8, 8), (80, 50), (640, 400)] {
            let image = smooth(width, height);
            let mut tiff = Vec::new();
            let mut encoder = TiffEncoder::new(Cursor::new(&mut tiff));
            encoder.set_icc_profile(icc.clone()).unwrap();
            encoder
                .write_image(image.data(), width, height, ExtendedColorType::Rgb8)
                .unwrap();
            let decoded = decode(&tiff, &Limits::default()).unwrap();
            assert!(
                matches!(&decoded.colour_profile, Some(colour::Applied::Converted(name)) if name.contains("Adobe")),
                "{width}x{height}: {:?}",
                decoded.colour_profile
            );
            let options = DecodeOptions {
                keep_icc: true,
                ..DecodeOptions::default()
            };
            let kept = decode_with(&tiff, &Limits::default(), &options).unwrap();
            assert_eq!(kept.icc.as_deref(), Some(&icc[..]), "{width}x{height}");
        }
    }

    #[test]
    fn libwebp_decodes_what_the_image_crate_decodes_and_leaves_it_the_bad_files() {
        let image = smooth(200, 120);
        let encoding = Encoding {
            quality: 80,
            lossless: false,
            ..Encoding::new(FileFormat::Webp)
        };
        let lossy = encode_with(&image, &encoding).unwrap();
        let ours = decode(&lossy, &Limits::default()).unwrap().image;
        let theirs = image::load_from_memory(&lossy).unwrap().into_rgb8();
        let theirs = Bitmap::new(200, 120, false, theirs.into_raw()).unwrap();
        // The two decoders upsample chroma a little differently; nothing more.
        let diff = mean_abs_diff(&ours, &theirs);
        assert!(diff < 1.0, "mean difference {diff}");

        // Cut short, libwebp refuses it and the image crate's decoder names the problem.
        let cut = &lossy[..lossy.len() / 2];
        assert!(decode_webp(cut).is_none());
        let err = decode(cut, &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("webp"), "{err}");
    }

    #[test]
    fn too_large_for_the_format_is_an_error() {
        let wide = Bitmap::new(70_000, 1, false, vec![0; 70_000 * 3]).unwrap();
        let err = encode(&wide, FileFormat::Jpeg, 85).unwrap_err();
        assert_eq!(
            err.to_string(),
            "jpeg cannot hold a 70000x1 image: at most 65535x65535"
        );
        assert!(encode(&wide, FileFormat::Webp, 85).is_err());
        assert!(encode(&wide, FileFormat::Gif, 85).is_err());
        assert!(encode(&wide, FileFormat::Png, 85).is_ok());
    }

    #[test]
    fn grey_and_sixteen_bit_inputs_become_eight_bit_rgb() {
        let grey = image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
        let mut png = Vec::new();
        grey.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let decoded = decode(&png, &Limits::default()).unwrap().image;
        assert!(!decoded.has_alpha());
        assert_eq!(&decoded.data()[3..6], &[40, 40, 40]);

        let deep = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(3, 2, |x, _| {
            image::Rgba([65535, (x * 1000) as u16, 0, 32768])
        });
        let mut png = Vec::new();
        deep.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let decoded = decode(&png, &Limits::default()).unwrap().image;
        assert!(decoded.has_alpha());
        assert_eq!(&decoded.data()[..4], &[255, 0, 0, 128]);
    }

    #[test]
    fn jpeg_end_detection() {
        let jpeg = encode(&gradient(40, 30, false), FileFormat::Jpeg, 70).unwrap();
        assert!(jpeg_reaches_end(&jpeg));
        assert!(!jpeg_reaches_end(&jpeg[..jpeg.len() - 1]));
        // Bytes after the EOI, as phones append videos, are fine.
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"\0\0\0\x18ftypmp42 more video data");
        assert!(jpeg_reaches_end(&trailer));
        assert!(decode(&trailer, &Limits::default()).is_ok());
        // An APP1 segment holding a complete thumbnail JPEG (with its own EOI) placed before
        // a truncated main image must not count as the end.
        let thumb = encode(&gradient(8, 8, false), FileFormat::Jpeg, 50).unwrap();
        let mut with_thumb = jpeg[..2].to_vec();
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        with_thumb.extend_from_slice(&thumb);
        with_thumb.extend_from_slice(&jpeg[2..]);
        assert!(jpeg_reaches_end(&with_thumb));
        assert!(!jpeg_reaches_end(&with_thumb[..with_thumb.len() - 2]));
        assert!(decode(&with_thumb, &Limits::default()).is_ok());
        for bad in [
            &b""[..],
            &[0xFF, 0xD8],
            &[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x00],
        ] {
            assert!(!jpeg_reaches_end(bad));
        }
    }

    /// A smooth photo-like RGB image: gradients and a few soft waves, no noise.
    pub(crate) fn smooth(width: u32, height: u32) -> Bitmap {
        let data = (0..width * height)
            .flat_map(|i| {
                let (x, y) = ((i % width) as f32, (i / width) as f32);
                [
                    (x / width as f32 * 200.0 + 20.0) as u8,
                    (y / height as f32 * 200.0 + 20.0) as u8,
                    (128.0 + 60.0 * (x / 37.0).sin() * (y / 23.0).cos()) as u8,
                ]
            })
            .collect();
        Bitmap::new(width, height, false, data).unwrap()
    }

    /// `jpeg` with an EXIF APP1 segment saying `orientation`, right after the SOI.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0".to_vec();
        // One IFD entry: tag 0x0112 (orientation), type SHORT, count 1, the value; no next IFD.
        exif.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]);
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&exif);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// A committed test file (services/filter/tests/data, whose SOURCES.md says how each
    /// was made).
    pub(crate) fn test_data(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        std::fs::read(std::path::Path::new(path).join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}"))
    }

    #[test]
    fn an_adobe_cmyk_jpeg_comes_out_as_libvips_makes_it_through_its_profile() {
        let jpeg = test_data("kite-cmyk-320x200.jpg");
        let expected = decode(&test_data("kite-cmyk-320x200.png"), &Limits::default())
            .unwrap()
            .image;
        let decoded = decode(&jpeg, &Limits::default()).unwrap();
        assert_eq!(decoded.colour_type, "cmyk8");
        assert!(
            matches!(&decoded.colour_profile, Some(colour::Applied::Converted(_))),
            "{:?}",
            decoded.colour_profile
        );
        let off = mean_abs_diff(&decoded.image, &expected);
        assert!(off < 1.0, "mean difference from libvips {off}");
        // Shrunk on load too, through the same profile.
        let shrunk = decode_shrunk(&jpeg, &Limits::default(), (80, 50)).unwrap();
        assert_eq!((shrunk.image.width(), shrunk.image.height()), (80, 50));
        // Without its profile the formula's colours are far off: the profile is what counts.
        let stripped = strip_app2(&jpeg);
        let formula = decode(&stripped, &Limits::default()).unwrap();
        assert_eq!(formula.colour_profile, None);
        assert!(mean_abs_diff(&formula.image, &expected) > 3.0);
    }

    /// The JPEG without its APP2 (ICC) segments.
    fn strip_app2(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while jpeg[i] == 0xFF && jpeg[i + 1] != 0xDA {
            let end = i + 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if jpeg[i + 1] != 0xE2 {
                out.extend_from_slice(&jpeg[i..end]);
            }
            i = end;
        }
        out.extend_from_slice(&jpeg[i..]);
        out
    }

    #[test]
    fn cmyk_samples_read_plain_or_adobe_inverted() {
        let jpeg = test_data("kite-cmyk-320x200.jpg");
        let profile = jpeg_icc_profile(
            jpeg.windows(14)
                .enumerate()
                .filter(|(_, w)| w.starts_with(&[0xFF, 0xE2]))
                .map(|(i, _)| {
                    let length = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
                    &jpeg[i + 4..i + 2 + length]
                }),
        )
        .unwrap();
        // No ink is white whichever way it is stored; all of it is nearly black.
        let white = |pixel: [u8; 4], inverted| {
            colour::CmykToSrgb::new(&profile, inverted)
                .unwrap()
                .convert(&pixel)
        };
        for (pixel, inverted) in [([0, 0, 0, 0], false), ([255; 4], true)] {
            assert!(white(pixel, inverted).iter().all(|&c| c > 240), "{pixel:?}");
        }
        for (pixel, inverted) in [([255; 4], false), ([0, 0, 0, 0], true)] {
            assert!(white(pixel, inverted).iter().all(|&c| c < 60), "{pixel:?}");
        }
        // An RGB profile is not one for CMYK samples.
        let (_, adobe) = system_profile("compatibleWithAdobeRGB1998.icc");
        assert!(colour::CmykToSrgb::new(&adobe, false).is_err());
    }

    pub(crate) fn mean_abs_diff(a: &Bitmap, b: &Bitmap) -> f64 {
        assert_eq!((a.width(), a.height()), (b.width(), b.height()));
        let sum: u64 = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        sum as f64 / a.data().len() as f64
    }

    #[test]
    fn jpeg_shrinks_on_load_to_the_smallest_scale_that_is_big_enough() {
        let image = smooth(400, 240);
        let jpeg = encode(&image, FileFormat::Jpeg, 92).unwrap();
        let full = decode(&jpeg, &Limits::default()).unwrap();
        assert_eq!(full.full_size, (400, 240));
        for (min_size, expected) in [
            ((1, 1), (50, 30)),
            ((50, 30), (50, 30)),
            ((51, 0), (100, 60)),
            ((0, 31), (100, 60)),
            ((150, 0), (200, 120)),
            ((201, 1), (400, 240)),
            ((u32::MAX, u32::MAX), (400, 240)),
        ] {
            let shrunk = decode_shrunk(&jpeg, &Limits::default(), min_size).unwrap();
            let size = (shrunk.image.width(), shrunk.image.height());
            assert_eq!(size, expected, "{min_size:?}");
            assert_eq!(shrunk.full_size, (400, 240));
            assert_eq!(shrunk.format, FileFormat::Jpeg);
            // Close to the full decode downscaled by a proper filter.
            let resize = crate::ops::Resize::new(size.0, size.1, crate::ops::Fit::Fill).unwrap();
            let reference = resize.apply(full.image.clone()).unwrap();
            let diff = mean_abs_diff(&shrunk.image, &reference);
            assert!(diff < 2.5, "{min_size:?}: mean difference {diff}");
        }
        // Odd sizes round up, as libjpeg does.
        let odd = encode(&smooth(401, 33), FileFormat::Jpeg, 90).unwrap();
        let shrunk = decode_shrunk(&odd, &Limits::default(), (1, 1)).unwrap();
        assert_eq!((shrunk.image.width(), shrunk.image.height()), (51, 5));
        // Deterministic.
        assert_eq!(
            decode_shrunk(&jpeg, &Limits::default(), (1, 1)).unwrap(),
            decode_shrunk(&jpeg, &Limits::default(), (1, 1)).unwrap()
        );
        // Other formats decode in full.
        let png = encode(&image, FileFormat::Png, 90).unwrap();
        let decoded = decode_shrunk(&png, &Limits::default(), (1, 1)).unwrap();
        assert_eq!((decoded.image.width(), decoded.image.height()), (400, 240));
    }

    #[test]
    fn exif_orientation_is_applied_to_full_and_shrunk_decodes() {
        // Stored 320x160, left half dark: orientation 6 (rotate 90 clockwise to view) makes it
        // 160x320 with the dark half on top; 8 puts it at the bottom; 3 turns it upside down.
        let (w, h) = (320u32, 160u32);
        let data = (0..w * h)
            .flat_map(|i| {
                if i % w < w / 2 {
                    [20, 20, 20]
                } else {
                    [230, 230, 230]
                }
            })
            .collect();
        let stored = Bitmap::new(w, h, false, data).unwrap();
        let jpeg = encode(&stored, FileFormat::Jpeg, 95).unwrap();
        let top_left = |image: &Bitmap| image.data()[0];
        let bottom_left = |image: &Bitmap| {
            let row = image.width() as usize * 3;
            image.data()[image.data().len() - row]
        };
        for (orientation, upright, dark_top, dark_left) in [
            (1, (320, 160), true, true),
            (3, (320, 160), true, false),
            (6, (160, 320), true, true),
            (8, (160, 320), false, true),
        ] {
            let input = with_orientation(&jpeg, orientation);
            for min_size in [(u32::MAX, u32::MAX), (40, 40), (1, 1)] {
                let decoded = decode_shrunk(&input, &Limits::default(), min_size).unwrap();
                assert_eq!(decoded.full_size, upright, "orientation {orientation}");
                let image = &decoded.image;
                let scale = match min_size.0 {
                    u32::MAX => 1,
                    40 => 4,
                    _ => 8,
                };
                assert_eq!(
                    (image.width(), image.height()),
                    (upright.0 / scale, upright.1 / scale),
                    "orientation {orientation} min {min_size:?}"
                );
                // Orientation 3 puts the dark half on the right, so the first pixel is light.
                let first_dark = top_left(image) < 128;
                assert_eq!(
                    first_dark,
                    dark_top && dark_left,
                    "orientation {orientation}"
                );
                if orientation == 6 {
                    assert!(bottom_left(image) > 128, "dark half is on top");
                }
                if orientation == 8 {
                    assert!(bottom_left(image) < 128, "dark half is at the bottom");
                }
            }
        }
    }

    #[test]
    fn exif_orientations_1_to_8_on_a_real_photo() {
        let photo = corpus("kite-2560x1600.jpg");
        let stored = decode(&photo, &Limits::default()).unwrap().image;
        let (w, h) = (stored.width(), stored.height());
        // Where each upright pixel (x, y) comes from in the stored image, as EXIF defines the
        // orientations; written out here rather than taken from the decoder's own transform.
        let source = |orientation: u16, x: u32, y: u32| match orientation {
            1 => (x, y),
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            8 => (w - 1 - y, x),
            _ => unreachable!(),
        };
        for orientation in 1..=8u16 {
            let decoded =
                decode(&with_orientation(&photo, orientation), &Limits::default()).unwrap();
            let image = &decoded.image;
            let upright = if orientation >= 5 { (h, w) } else { (w, h) };
            assert_eq!(
                (image.width(), image.height()),
                upright,
                "orientation {orientation}"
            );
            assert_eq!(decoded.full_size, upright);
            let mismatches = (0..upright.1)
                .flat_map(|y| (0..upright.0).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let (sx, sy) = source(orientation, x, y);
                    let at = |image: &Bitmap, x: u32, y: u32| {
                        let i = (y as usize * image.width() as usize + x as usize) * 3;
                        [image.data()[i], image.data()[i + 1], image.data()[i + 2]]
                    };
                    at(image, x, y) != at(&stored, sx, sy)
                })
                .count();
            assert_eq!(mismatches, 0, "orientation {orientation}");
        }
    }

    #[test]
    fn decoded_images_name_their_colour_type_and_carry_their_exif() {
        let jpeg = encode(&gradient(16, 8, false), FileFormat::Jpeg, 85).unwrap();
        let plain = decode(&jpeg, &Limits::default()).unwrap();
        assert_eq!(plain.colour_type, "rgb8");
        assert!(plain.exif.is_empty());
        let rotated = decode(&with_orientation(&jpeg, 6), &Limits::default()).unwrap();
        assert_eq!(
            crate::ops::analyze::exif_summary(&rotated.exif),
            vec![("Orientation".to_string(), "6".to_string())]
        );
        let png = encode(&gradient(16, 8, true), FileFormat::Png, 85).unwrap();
        assert_eq!(
            decode(&png, &Limits::default()).unwrap().colour_type,
            "rgba8"
        );
        let grey = image::GrayImage::from_pixel(4, 4, image::Luma([9]));
        let mut png = Vec::new();
        grey.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode(&png, &Limits::default()).unwrap().colour_type, "l8");
    }

    #[test]
    fn cmyk_jpegs_decode_through_the_fallback_decoder() {
        // libjpeg-turbo cannot turn CMYK into RGB, so these take the image crate's decoder.
        // Left half no ink at all, right half every channel full: two flat greys, whichever
        // way the file's Adobe marker says the values are stored.
        let (w, h) = (32usize, 16usize);
        let cmyk: Vec<u8> = (0..w * h)
            .flat_map(|i| if i % w < w / 2 { [0; 4] } else { [255; 4] })
            .collect();
        let jpeg = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
            compress.set_size(w, h);
            compress.set_quality(95.0);
            let mut started = compress.start_compress(Vec::new())?;
            started.write_scanlines(&cmyk)?;
            started.finish()
        }))
        .unwrap()
        .unwrap();
        let decoded = decode(&jpeg, &Limits::default()).unwrap();
        assert_eq!(decoded.colour_type, "cmyk8");
        let image = &decoded.image;
        assert_eq!(
            (image.width(), image.height(), image.channels()),
            (32, 16, 3)
        );
        let pixel = |x: usize, y: usize| {
            let i = (y * w + x) * 3;
            [image.data()[i], image.data()[i + 1], image.data()[i + 2]]
        };
        let (left, right) = (pixel(2, 8), pixel(29, 8));
        for p in [left, right] {
            assert!(
                p.iter().max().unwrap() - p.iter().min().unwrap() <= 4,
                "{p:?} is grey"
            );
        }
        assert!(
            left[0].abs_diff(right[0]) > 200,
            "{left:?} against {right:?}"
        );
    }

    #[test]
    fn exif_rotated_corpus_photo_comes_out_upright() {
        let bytes = corpus("safe-landing-exif-1622x2880.jpg");
        let full = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(full.full_size, (1622, 2880));
        assert_eq!((full.image.width(), full.image.height()), (1622, 2880));
        let shrunk = decode_shrunk(&bytes, &Limits::default(), (400, 0)).unwrap();
        assert_eq!(shrunk.full_size, (1622, 2880));
        assert_eq!((shrunk.image.width(), shrunk.image.height()), (406, 720));
        let resize = crate::ops::Resize::new(406, 720, crate::ops::Fit::Fill).unwrap();
        let reference = resize.apply(full.image).unwrap();
        let diff = mean_abs_diff(&shrunk.image, &reference);
        assert!(diff < 6.0, "mean difference {diff}");
    }

    #[test]
    fn jpeg_header_over_the_pixel_limit_is_refused_before_decoding() {
        // A real JPEG whose SOF0 is rewritten to claim 65000x65000 (4225 megapixels; JPEG
        // cannot say more): refused from the header, never allocated.
        let mut jpeg = encode(&gradient(16, 16, false), FileFormat::Jpeg, 85).unwrap();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        for min_size in [(u32::MAX, u32::MAX), (1, 1)] {
            let err = decode_shrunk(&jpeg, &Limits::default(), min_size).unwrap_err();
            assert_eq!(
                err,
                DecodeError::TooManyPixels {
                    width: 65000,
                    height: 65000,
                    limit: 100_000_000
                }
            );
        }
    }

    #[test]
    fn corpus_photos_decode() {
        let mut photos = 0;
        for (name, bytes) in corpus_files() {
            if detect_format(&bytes).is_none() {
                continue;
            }
            let decoded =
                decode(&bytes, &Limits::default()).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(decoded.image.width() >= 1000, "{name}");
            photos += 1;
        }
        assert!(photos >= 4, "{photos} photos in the corpus");
    }

    #[test]
    fn probe_reads_what_decode_will_make_from_the_header_alone() {
        for (name, bytes) in corpus_files() {
            let Some(format) = detect_format(&bytes) else {
                continue;
            };
            let probe = probe(&bytes).unwrap_or_else(|| panic!("{name}"));
            let decoded = decode(&bytes, &Limits::default()).unwrap();
            assert_eq!(probe.format, format, "{name}");
            assert_eq!((probe.width, probe.height), decoded.full_size, "{name}");
            // The autumn and colorful cups JPEGs are progressive, the others baseline.
            let progressive = name.starts_with("autumn") || name.starts_with("colorful");
            assert_eq!(probe.decoder_bytes > 0, progressive, "{name}");
            if progressive {
                // At least two bytes per sample of the luma plane.
                assert!(probe.decoder_bytes >= 2560 * 1600 * 2, "{name}");
            }
        }
        // EXIF orientation 6 turns the stored 320x160 upright.
        let jpeg = encode(&gradient(320, 160, false), FileFormat::Jpeg, 90).unwrap();
        let turned = probe(&with_orientation(&jpeg, 6)).unwrap();
        assert_eq!((turned.width, turned.height), (160, 320));
        assert_eq!((turned.bytes_per_pixel, turned.alpha), (3, false));
        let png = encode(&gradient(7, 5, true), FileFormat::Png, 85).unwrap();
        let probed = probe(&png).unwrap();
        assert_eq!(
            (
                probed.width,
                probed.height,
                probed.bytes_per_pixel,
                probed.alpha
            ),
            (7, 5, 4, true)
        );
    }

    #[test]
    fn probe_never_panics_on_hostile_bytes() {
        let jpeg = encode(&gradient(40, 30, false), FileFormat::Jpeg, 80).unwrap();
        let png = encode(&gradient(40, 30, true), FileFormat::Png, 80).unwrap();
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new(), b"GIF89a".to_vec(), b"BM".to_vec()];
        for file in [&jpeg, &png] {
            inputs.extend((0..file.len()).step_by(7).map(|cut| file[..cut].to_vec()));
        }
        let mut state = 0x9e37_79b9_u32;
        for prefix in [&jpeg[..4], &png[..8], b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0"] {
            let mut noise = prefix.to_vec();
            noise.extend((0..2000).map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            }));
            inputs.push(noise);
        }
        // A SOF claiming 65000x65000: read, not refused; the limits apply when decoding.
        let mut huge = jpeg.clone();
        let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        huge[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        assert_eq!(
            probe(&huge).map(|p| (p.width, p.height)),
            Some((65000, 65000))
        );
        for input in &inputs {
            let _ = probe(input);
        }
    }
}
