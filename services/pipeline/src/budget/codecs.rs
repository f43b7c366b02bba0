//! What decoding and encoding cost, for the budget's estimate (see `crate::budget`). Times are
//! single-core nanoseconds per pixel, measured on the development machine in a release build
//! and rounded up (the calibration is described in `crate::budget`); memory follows what each
//! decoder and encoder allocates (read from their code, checked with a counting allocator in
//! tests/budget_memory.rs).

use super::{Cost, Shape, ns};
use crate::formats::{Encoding, FileFormat, PngSpeed};

/// libjpeg-turbo: per stored pixel (reading the entropy-coded data, which every DCT scale
/// does), and per decoded pixel (inverse DCT, colour conversion).
const JPEG_DECODE_NS: f64 = 7.0;
const JPEG_DECODE_OUTPUT_NS: f64 = 4.0;
/// A progressive JPEG's extra, per stored pixel: several passes over its coefficients.
const JPEG_PROGRESSIVE_DECODE_NS: f64 = 10.0;
/// image's decoders, per stored pixel; PNG per byte of its samples, since inflating is most
/// of the work and 16-bit samples are twice the bytes.
const PNG_DECODE_NS_PER_BYTE: f64 = 7.0;
const WEBP_DECODE_NS: f64 = 65.0;
const GIF_DECODE_NS: f64 = 17.0;
const BMP_DECODE_NS: f64 = 4.5;
const TIFF_DECODE_NS: f64 = 2.0;
/// rav1d on one thread, and the YUV to RGB conversion: 16.6 ns for a 4K q60 photo.
const AVIF_DECODE_NS: f64 = 25.0;
/// Converting the decoder's buffer to the 8-bit bitmap, per pixel.
const CONVERT_NS: f64 = 1.0;

/// What decoding costs: `full` is the stored image's upright size, `decoded` the bitmap's
/// (smaller for a JPEG shrunk on load), `bytes_per_pixel` the decoder's buffer's depth, and
/// `decoder_bytes` the decoder's own memory when known (the codec's `Probe::decoder_bytes`). `format`
/// `None` takes the costliest decoder that depth could be.
pub(super) fn decode_cost(
    format: Option<FileFormat>,
    full: Shape,
    decoded: Shape,
    bytes_per_pixel: u32,
    decoder_bytes: Option<u64>,
) -> Cost {
    let pixels = full.pixels();
    let bitmap = decoded.bytes();
    // A quarter-turn EXIF orientation copies the bitmap.
    let turned = bitmap.saturating_mul(2);
    if format == Some(FileFormat::Jpeg) && bytes_per_pixel == 3 {
        // libjpeg-turbo writes RGB straight into the bitmap's buffer; its own memory is a row
        // of MCUs, or a progressive file's coefficients, up to 6 bytes a pixel at 4:4:4.
        let coefficients = decoder_bytes.unwrap_or(pixels.saturating_mul(6));
        let progressive = if coefficients > 0 {
            JPEG_PROGRESSIVE_DECODE_NS
        } else {
            0.0
        };
        return Cost {
            peak_bytes: bitmap.saturating_add(coefficients).max(turned),
            cpu_ns: ns(pixels, JPEG_DECODE_NS + progressive)
                + ns(decoded.pixels(), JPEG_DECODE_OUTPUT_NS),
        };
    }
    let depth = u64::from(bytes_per_pixel);
    let native = pixels.saturating_mul(depth);
    // image's decoders fill a buffer at the stored depth, converted to the bitmap beside it.
    // Beyond that: WebP decodes through a YUV or ARGB frame (up to 4 bytes a pixel), GIF
    // through a frame buffer, TIFF through its strips' decoded data; an unknown format may be
    // any of them (or a progressive JPEG, whose coefficients are as big as its RGB).
    let scratch = match format {
        Some(FileFormat::Png | FileFormat::Bmp) => 0,
        Some(FileFormat::Webp | FileFormat::Gif) => pixels.saturating_mul(4),
        // rav1d's frame and its state: 4 bytes a pixel at 8-bit 4:2:0, measured in
        // tests/budget_memory.rs. It writes RGB straight into the bitmap, so the stored-depth
        // buffer counted above is slack that covers a 10-bit or 4:4:4 frame's extra.
        Some(FileFormat::Avif) => pixels.saturating_mul(4),
        Some(FileFormat::Tiff | FileFormat::Jpeg) => native,
        // AVIF's frame is left out, as its encoder is in `encode_cost`: the filter checks it.
        None => native.max(pixels.saturating_mul(4)),
    };
    let per_pixel = match format {
        Some(FileFormat::Png) => PNG_DECODE_NS_PER_BYTE * depth as f64,
        Some(FileFormat::Webp) => WEBP_DECODE_NS,
        Some(FileFormat::Gif) => GIF_DECODE_NS,
        Some(FileFormat::Bmp) => BMP_DECODE_NS,
        Some(FileFormat::Tiff) => TIFF_DECODE_NS,
        Some(FileFormat::Avif) => AVIF_DECODE_NS,
        // CMYK, through image's decoder.
        Some(FileFormat::Jpeg) => JPEG_DECODE_NS + JPEG_DECODE_OUTPUT_NS + CONVERT_NS,
        None => (PNG_DECODE_NS_PER_BYTE * depth as f64)
            .max(WEBP_DECODE_NS)
            .max(GIF_DECODE_NS)
            .max(JPEG_DECODE_NS + JPEG_PROGRESSIVE_DECODE_NS + JPEG_DECODE_OUTPUT_NS),
    };
    Cost {
        peak_bytes: native
            .saturating_add(full.bytes())
            .saturating_add(scratch)
            .max(turned),
        cpu_ns: ns(pixels, per_pixel + CONVERT_NS),
    }
}

/// Encoders per pixel. PNG by its three speeds (see [`Encoding::png_speed`]).
const JPEG_ENCODE_NS: f64 = 14.0;
const JPEG_PROGRESSIVE_ENCODE_NS: f64 = 55.0;
/// fdeflate, then libdeflate up to level 6 and its levels 8 and 10, which search much longer:
/// quiet, on 1920-wide photos, level 6 took up to 53 ns a pixel, level 7 103 and level 10
/// about 530 (BENCHMARKS.md, "PNG"), on the 4K photo levels 1, 4 and 10 29, 39 and 131.
const PNG_FAST_ENCODE_NS: f64 = 14.0;
const PNG_DEFAULT_ENCODE_NS: f64 = 150.0;
const PNG_BEST_ENCODE_NS: f64 = 800.0;
/// libwebp at method 2: 220 ns a pixel on the 1920-wide reference photo, rounded up by half.
const WEBP_LOSSLESS_ENCODE_NS: f64 = 330.0;
const WEBP_LOSSY_ENCODE_NS: f64 = 200.0;
const GIF_ENCODE_NS: f64 = 330.0;
const BMP_ENCODE_NS: f64 = 5.0;
const TIFF_ENCODE_NS: f64 = 2.0;
/// rav1e on one thread, by effort 0..=9 (rav1e's speed 10 down to 1). Measured at 1920x1200
/// on the corpus's kite photo (150, 170, 550, 560, 770, 610, 610, 630, 1080 and 3460 ns; the
/// speeds between 2 and 8 cost about the same) and at effort 4 on the busier safe-landing
/// photo (1090 ns), then rounded up by half again for busier images.
const AVIF_ENCODE_NS: [f64; 10] = [
    250.0, 300.0, 900.0, 900.0, 1700.0, 1700.0, 1700.0, 1700.0, 2500.0, 6000.0,
];

/// What encoding an `image` costs as `encoding` says; `None` (the input's format, unknown)
/// takes the costliest encoder.
pub(super) fn encode_cost(encoding: Option<&Encoding>, image: Shape) -> Cost {
    let Some(encoding) = encoding else {
        return [
            Encoding::new(FileFormat::Jpeg),
            Encoding {
                progressive: true,
                ..Encoding::new(FileFormat::Jpeg)
            },
            // The input's format at its default options: compression 6.
            Encoding::new(FileFormat::Png),
            // Lossy: libwebp's lossless working set (24 bytes a pixel) would refuse every
            // 100-megapixel pipeline without a format op. As with AVIF below, the filter
            // checks again with the format, and the options, the input really has.
            Encoding {
                lossless: false,
                ..Encoding::new(FileFormat::Webp)
            },
            Encoding::new(FileFormat::Gif),
            Encoding::new(FileFormat::Bmp),
            // Not AVIF, whose encoder is ten times the next: a pipeline without a format op
            // would be budgeted as if every input were an AVIF. The filter checks again
            // with the format its probe read, which catches an AVIF input that is too big.
            Encoding::new(FileFormat::Tiff),
        ]
        .iter()
        .map(|encoding| encode_cost(Some(encoding), image))
        .fold(Cost::default(), |a, b| Cost {
            peak_bytes: a.peak_bytes.max(b.peak_bytes),
            cpu_ns: a.cpu_ns.max(b.cpu_ns),
        });
    };
    let (pixels, bitmap) = (image.pixels(), image.bytes());
    let flattened = if image.channels == 4 {
        pixels.saturating_mul(3)
    } else {
        0
    };
    // Beside the bitmap, while it encodes; the output grows by doubling, so its buffer can be
    // up to twice the file.
    let (extra, per_pixel) = match encoding.format {
        // RGBA flattened to RGB, and the file (well under a byte a pixel at any quality).
        FileFormat::Jpeg if encoding.progressive => (
            // jpeg-encoder keeps every block's coefficients for the later scans.
            flattened + pixels.saturating_mul(6) + bitmap,
            JPEG_PROGRESSIVE_ENCODE_NS,
        ),
        FileFormat::Jpeg => (flattened + bitmap, JPEG_ENCODE_NS),
        // The filtered rows (the bitmap and a byte a row), libdeflate's output buffer (its
        // bound: about the rows' size), then the file copied out of it. Through fdeflate (the
        // png crate), the file twice: less.
        FileFormat::Png => (
            bitmap.saturating_mul(5) / 2,
            match encoding.png_speed() {
                PngSpeed::Fast => PNG_FAST_ENCODE_NS,
                PngSpeed::Default => PNG_DEFAULT_ENCODE_NS,
                PngSpeed::Best => PNG_BEST_ENCODE_NS,
            },
        ),
        // libwebp's lossless working set (ARGB words, hash chains, backward references),
        // which the counting allocator of tests/budget_memory.rs cannot see: the 2560x1600
        // kite peaked at 156 MB of resident memory through it, 70 MB (17 bytes a pixel) more
        // than through the BMP encoder (`/usr/bin/time -f %M bench-one`). With the file.
        FileFormat::Webp if encoding.lossless => (
            pixels.saturating_mul(24).saturating_add(bitmap),
            WEBP_LOSSLESS_ENCODE_NS,
        ),
        // libwebp's YUVA picture, its output, and our copy of it.
        FileFormat::Webp => (
            pixels.saturating_mul(3).saturating_add(bitmap),
            WEBP_LOSSY_ENCODE_NS,
        ),
        // quantette's k-means: its colour table and the indices, 5.5 bytes a pixel over the
        // bitmap measured on the 2560x1600 kite (tests/budget_memory.rs). With alpha, over a
        // 3-byte copy of the opaque pixels, then the indices: 10.3 bytes a pixel on a 16-bit
        // RGBA gradient of many distinct colours.
        FileFormat::Gif => (pixels.saturating_mul(12), GIF_ENCODE_NS),
        // The file is the pixels, row-padded, in a buffer that doubled its way there.
        FileFormat::Bmp => (bitmap.saturating_mul(2), BMP_ENCODE_NS),
        FileFormat::Tiff => (bitmap.saturating_mul(2), TIFF_ENCODE_NS),
        // rav1e's source frame, its reconstruction and reference frames, and per-block
        // state: 27 bytes a pixel measured at 1280x800 (tests/budget_memory.rs).
        FileFormat::Avif => (
            pixels.saturating_mul(32),
            AVIF_ENCODE_NS[usize::from(encoding.effort.min(9))],
        ),
    };
    Cost {
        peak_bytes: bitmap.saturating_add(extra),
        cpu_ns: ns(pixels, per_pixel),
    }
}
