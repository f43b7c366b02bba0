//! PNG at a deflate level: each row filtered as the png crate's adaptive filter does it, then
//! the whole image compressed in one call by libdeflate. The png crate still writes the
//! chunks around it (header, profile, EXIF, the end).
//!
//! Hand-written over the png crate's own path because that path streams rows into zlib-rs,
//! and its filters are private. libdeflate compresses a whole buffer at once, faster at the
//! same size: on the 1920-wide reference photo's filtered rows (6.2 MB), its level 4 (our
//! default) took 72 ms for 4,032 KB where zlib-rs level 3 (the default before) took 95 ms for
//! 3,925 KB, and its level 1 53 ms for 3,932 KB (BENCHMARKS.md, "PNG"). The fast setting
//! (compression 0–2, fdeflate) stays with the png crate.

use std::borrow::Cow;

use libdeflater::{CompressionLvl, Compressor};
use pixelmesh_pipeline::Bitmap;

/// `image` as a PNG, its rows compressed by libdeflate at `level` (1–12), with the ICC profile
/// and EXIF block given (either may be empty).
pub fn encode(image: &Bitmap, level: u8, icc: &[u8], exif: &[u8]) -> Result<Vec<u8>, String> {
    let (width, height) = (image.width(), image.height());
    let bpp = if image.has_alpha() { 4 } else { 3 };
    let compressed = {
        let filtered = filter_rows(image.data(), width as usize * bpp, bpp);
        let level = CompressionLvl::new(i32::from(level))
            .map_err(|err| format!("deflate level {level}: {err:?}"))?;
        let mut compressor = Compressor::new(level);
        let mut compressed = vec![0; compressor.zlib_compress_bound(filtered.len())];
        let len = compressor
            .zlib_compress(&filtered, &mut compressed)
            .map_err(|err| format!("deflate: {err:?}"))?;
        compressed.truncate(len);
        compressed
    };
    let mut info = png::Info::with_size(width, height);
    info.color_type = if bpp == 4 {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    };
    info.bit_depth = png::BitDepth::Eight;
    if !icc.is_empty() {
        info.icc_profile = Some(Cow::Borrowed(icc));
    }
    if !exif.is_empty() {
        info.exif_metadata = Some(Cow::Borrowed(exif));
    }
    // Header, chunks and the end: at most a few KB of metadata beside the data.
    let mut out = Vec::with_capacity(compressed.len() + icc.len() + exif.len() + 1024);
    let failed = |err: png::EncodingError| err.to_string();
    let mut writer = png::Encoder::with_info(&mut out, info)
        .map_err(failed)?
        .write_header()
        .map_err(failed)?;
    // A chunk holds at most 2^31 - 1 bytes.
    for part in compressed.chunks(i32::MAX as usize) {
        writer.write_chunk(png::chunk::IDAT, part).map_err(failed)?;
    }
    writer.finish().map_err(failed)?;
    Ok(out)
}

/// The filters the adaptive choice tries, in the png crate's order: on a tie the later wins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    Sub = 1,
    Up = 2,
    Average = 3,
    Paeth = 4,
}

/// Every row of `data` (rows of `stride` bytes, `bpp` bytes a pixel), each behind its filter
/// type byte, as the zlib stream of a PNG holds them.
fn filter_rows(data: &[u8], stride: usize, bpp: usize) -> Vec<u8> {
    let rows = data.len() / stride;
    let mut out = vec![0; rows * (stride + 1)];
    let zeros = vec![0; stride];
    let mut previous = zeros.as_slice();
    for (row, filtered) in data
        .chunks_exact(stride)
        .zip(out.chunks_exact_mut(stride + 1))
    {
        let (kind, filtered) = filtered.split_at_mut(1);
        kind[0] = adaptive(bpp, previous, row, filtered) as u8;
        previous = row;
    }
    out
}

/// The png crate's adaptive choice: the filter whose output has the smallest sum of absolute
/// values (bytes read as signed), which is left in `out`.
fn adaptive(bpp: usize, previous: &[u8], row: &[u8], out: &mut [u8]) -> Filter {
    let mut best = (u64::MAX, Filter::Up);
    for filter in [Filter::Up, Filter::Sub, Filter::Average, Filter::Paeth] {
        apply(filter, bpp, previous, row, out);
        let cost = out
            .iter()
            .map(|&byte| u64::from((byte as i8).unsigned_abs()))
            .sum::<u64>();
        if cost <= best.0 {
            best = (cost, filter);
            if cost == 0 {
                return filter;
            }
        }
    }
    if best.1 != Filter::Paeth {
        apply(best.1, bpp, previous, row, out);
    }
    best.1
}

/// `row` filtered by `filter` against the row above, `previous`. Each output byte depends on
/// the raw bytes only, so the loops vectorise.
fn apply(filter: Filter, bpp: usize, previous: &[u8], row: &[u8], out: &mut [u8]) {
    let (first, rest) = out.split_at_mut(bpp);
    // Left of the first pixel, a and c are 0.
    for i in 0..bpp {
        first[i] = row[i].wrapping_sub(match filter {
            Filter::Sub => 0,
            Filter::Up | Filter::Paeth => previous[i],
            Filter::Average => previous[i] / 2,
        });
    }
    let current = &row[bpp..];
    let left = &row[..row.len() - bpp];
    let (above, above_left) = (&previous[bpp..], &previous[..previous.len() - bpp]);
    match filter {
        Filter::Sub => {
            for ((out, &x), &a) in rest.iter_mut().zip(current).zip(left) {
                *out = x.wrapping_sub(a);
            }
        }
        Filter::Up => {
            for ((out, &x), &b) in rest.iter_mut().zip(current).zip(above) {
                *out = x.wrapping_sub(b);
            }
        }
        Filter::Average => {
            for (((out, &x), &a), &b) in rest.iter_mut().zip(current).zip(left).zip(above) {
                // (a + b) / 2 without widening.
                *out = x.wrapping_sub((a & b) + ((a ^ b) >> 1));
            }
        }
        Filter::Paeth => {
            for ((((out, &x), &a), &b), &c) in rest
                .iter_mut()
                .zip(current)
                .zip(left)
                .zip(above)
                .zip(above_left)
            {
                *out = x.wrapping_sub(paeth(a, b, c));
            }
        }
    }
}

/// PNG's Paeth predictor in 8-bit arithmetic (FPNGE's form, as the png crate has it): the
/// same choice as the specification's, and vectorisable.
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let pa = b.max(c) - b.min(c);
    let pb = a.max(c) - a.min(c);
    // |a + b - 2c| is |pa - pb| when c lies between a and b; otherwise it exceeds both.
    let pc = if (a < c) == (c < b) {
        pa.max(pb) - pa.min(pb)
    } else {
        255
    };
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::test_data;
    use crate::codec::{self, Limits};
    use std::io::Read;

    /// The zlib stream of `png`'s IDAT chunks, inflated: the filtered rows.
    fn filtered_rows(png: &[u8]) -> Vec<u8> {
        let mut idat = Vec::new();
        let mut at = 8;
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            if &png[at + 4..at + 8] == b"IDAT" {
                idat.extend_from_slice(&png[at + 8..at + 8 + len]);
            }
            at += 12 + len;
        }
        let mut rows = Vec::new();
        flate2::read::ZlibDecoder::new(idat.as_slice())
            .read_to_end(&mut rows)
            .unwrap();
        rows
    }

    /// The png crate's own encode of `image`, adaptive filter, zlib-rs level 1.
    fn png_crate(image: &Bitmap) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
        encoder.set_color(if image.has_alpha() {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_filter(png::Filter::Adaptive);
        encoder.set_deflate_compression(png::DeflateCompression::Level(1));
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(image.data()).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn the_rows_are_filtered_as_the_png_crate_filters_them_and_decode_exactly() {
        let photo = codec::decode(&test_data("kite-cmyk-320x200.png"), &Limits::default())
            .unwrap()
            .image;
        let alpha = codec::decode(&test_data("kite-rgba-320x200.png"), &Limits::default())
            .unwrap()
            .image;
        // Flat areas, edges and noise: every filter wins some row, and some rows cost 0.
        let mut noise = Vec::with_capacity(97 * 61 * 3);
        let mut state = 0x2545_f491_u32;
        for y in 0..61u32 {
            for x in 0..97u32 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let pixel = match y % 4 {
                    0 => [40, 40, 40],
                    1 => [(x * 2) as u8, (y * 3) as u8, 7],
                    _ => state.to_le_bytes()[..3].try_into().unwrap(),
                };
                noise.extend_from_slice(&pixel);
            }
        }
        let noise = Bitmap::new(97, 61, false, noise).unwrap();
        for image in [&photo, &alpha, &noise] {
            let ours = encode(image, 6, &[], &[]).unwrap();
            assert_eq!(filtered_rows(&ours), filtered_rows(&png_crate(image)));
            let back = codec::decode(&ours, &Limits::default()).unwrap().image;
            assert_eq!(back.has_alpha(), image.has_alpha());
            assert_eq!(back.data(), image.data(), "lossless");
        }
        let kinds: std::collections::BTreeSet<u8> = {
            let rows = filtered_rows(&encode(&noise, 6, &[], &[]).unwrap());
            rows.chunks(97 * 3 + 1).map(|row| row[0]).collect()
        };
        assert!(kinds.len() >= 3, "filters used: {kinds:?}");
    }

    #[test]
    fn paeth_is_the_specifications_predictor() {
        fn specification(a: u8, b: u8, c: u8) -> u8 {
            let p = i16::from(a) + i16::from(b) - i16::from(c);
            let (pa, pb, pc) = (
                (p - i16::from(a)).abs(),
                (p - i16::from(b)).abs(),
                (p - i16::from(c)).abs(),
            );
            if pa <= pb && pa <= pc {
                a
            } else if pb <= pc {
                b
            } else {
                c
            }
        }
        for a in (0..=255).step_by(5) {
            for b in (0..=255).step_by(3) {
                for c in 0..=255 {
                    assert_eq!(paeth(a, b, c), specification(a, b, c), "{a} {b} {c}");
                }
            }
        }
    }

    #[test]
    fn the_profile_and_exif_are_written_and_read_back() {
        let image = Bitmap::new(3, 2, false, (0..18).collect()).unwrap();
        let (_, icc) = codec::tests::system_profile("compatibleWithAdobeRGB1998.icc");
        let exif = crate::metadata::tests::exif(1);
        let png = encode(&image, 1, &icc, &exif).unwrap();
        let mut decoder = png::Decoder::new(std::io::Cursor::new(&png))
            .read_info()
            .unwrap();
        let info = decoder.info();
        assert_eq!(info.icc_profile.as_deref(), Some(icc.as_slice()));
        assert_eq!(info.exif_metadata.as_deref(), Some(exif.as_slice()));
        let mut pixels = vec![0; decoder.output_buffer_size().unwrap()];
        decoder.next_frame(&mut pixels).unwrap();
        assert_eq!(pixels, image.data());
    }
}
