//! Property tests of `media`: `image_header`, which storage runs on every upload's first bytes
//! to record its size and depth for the budget, and `essence`, which reads `Content-Type`
//! headers clients send.
//!
//! Images are generated with image's encoders, and PNGs also written by hand here, for the
//! colour types, depths and chunks (palette, `tRNS`, 1-, 2- and 4-bit) image never writes.
//! Each property runs a fixed number of cases through [`check`], which prints how many ran.

use std::io::Cursor;

use image::codecs::bmp::BmpEncoder;
use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::tiff::TiffEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use pixelmesh_common::media::{ImageHeader, essence, image_header};
use pixelmesh_common::testing::{check, png_chunk};
use proptest::prelude::*;

// ---------------------------------------------------------------- helpers

/// Deterministic noise, so images are not flat (flat ones compress to nothing).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------- PNGs by hand

/// A zlib stream of stored (uncompressed) blocks: valid, and needs no deflater.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(0xFFFF).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1_u32, 0_u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A PNG's colour type and bit depth, and whether it has a `tRNS` chunk.
#[derive(Debug, Clone, Copy)]
struct PngLayout {
    colour: u8,
    depth: u8,
    transparency: bool,
}

/// Every colour type at every depth the PNG spec allows, with and without `tRNS` where the
/// colour type may have one.
fn png_layout() -> impl Strategy<Value = PngLayout> {
    let layouts: Vec<(u8, u8)> = [
        (0, &[1, 2, 4, 8, 16][..]),
        (2, &[8, 16]),
        (3, &[1, 2, 4, 8]),
        (4, &[8, 16]),
        (6, &[8, 16]),
    ]
    .iter()
    .flat_map(|(colour, depths)| depths.iter().map(move |depth| (*colour, *depth)))
    .collect();
    (prop::sample::select(layouts), any::<bool>()).prop_map(|((colour, depth), transparency)| {
        PngLayout {
            colour,
            depth,
            // Only grey, RGB and palette images may carry tRNS.
            transparency: transparency && colour <= 3,
        }
    })
}

fn png_by_hand(layout: PngLayout, width: u32, height: u32, seed: u64) -> Vec<u8> {
    let PngLayout {
        colour,
        depth,
        transparency,
    } = layout;
    let samples = match colour {
        0 | 3 => 1,
        2 => 3,
        4 => 2,
        _ => 4,
    };
    let row_bytes = (width as usize * samples * usize::from(depth)).div_ceil(8);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[depth, colour, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    let entries = 1_usize << depth.min(8);
    if colour == 3 {
        png_chunk(&mut out, b"PLTE", &noise(seed ^ 1, entries * 3));
    }
    if transparency {
        let trns = match colour {
            0 => noise(seed ^ 2, 2),
            2 => noise(seed ^ 2, 6),
            _ => noise(seed ^ 2, entries.min(1 + (seed as usize % entries))),
        };
        png_chunk(&mut out, b"tRNS", &trns);
    }
    let pixels = noise(seed, row_bytes * height as usize);
    let mut raw = Vec::with_capacity((row_bytes + 1) * height as usize);
    for (y, row) in pixels.chunks(row_bytes.max(1)).enumerate() {
        // Every filter type: any bytes unfilter to valid samples.
        raw.push((y % 5) as u8);
        raw.extend_from_slice(row);
    }
    png_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------- encoded images

/// How a generated image is written.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Png(PngLayout),
    /// image's PNG encoder, at one of its colour types.
    PngEncoded(ExtendedColorType),
    /// Baseline JPEG, with `segments` application segments of `segment_bytes` each before
    /// the frame header, as phones write EXIF, XMP and ICC profiles.
    Jpeg {
        grey: bool,
        segments: usize,
        segment_bytes: usize,
    },
    Webp(ExtendedColorType),
    Gif,
    Bmp(ExtendedColorType),
    Tiff(ExtendedColorType),
}

#[derive(Clone)]
struct Generated {
    kind: Kind,
    width: u32,
    height: u32,
    seed: u64,
    bytes: Vec<u8>,
}

/// Without the bytes: `encode(kind, width, height, seed)` makes them again.
impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("kind", &self.kind)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("seed", &self.seed)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

fn bytes_per_pixel(colour: ExtendedColorType) -> usize {
    usize::from(colour.bits_per_pixel() / 8)
}

/// Samples for `colour`; float ones kept finite (noise bytes can spell NaN).
fn samples(colour: ExtendedColorType, pixels: usize, seed: u64) -> Vec<u8> {
    let mut data = noise(seed, pixels * bytes_per_pixel(colour));
    if matches!(
        colour,
        ExtendedColorType::Rgb32F | ExtendedColorType::Rgba32F
    ) {
        for sample in data.chunks_exact_mut(4) {
            sample.copy_from_slice(&(f32::from(sample[0]) / 255.0).to_ne_bytes());
        }
    }
    data
}

/// `jpeg` with segments inserted after its start-of-image marker.
fn with_segments(jpeg: Vec<u8>, segments: usize, segment_bytes: usize, seed: u64) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    for i in 0..segments {
        // APP2 to APP15 and COM: segments a decoder skips by their length.
        let marker = [0xE2 + (i % 14) as u8, 0xFE][i % 2];
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((segment_bytes + 2) as u16).to_be_bytes());
        out.extend_from_slice(&noise(seed ^ i as u64, segment_bytes));
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn encode(kind: Kind, width: u32, height: u32, seed: u64) -> Vec<u8> {
    let pixels = (width * height) as usize;
    let mut out = Vec::new();
    match kind {
        Kind::Png(layout) => out = png_by_hand(layout, width, height, seed),
        Kind::PngEncoded(colour) => PngEncoder::new(&mut out)
            .write_image(&samples(colour, pixels, seed), width, height, colour)
            .expect("png"),
        Kind::Jpeg {
            grey,
            segments,
            segment_bytes,
        } => {
            let colour = if grey {
                ExtendedColorType::L8
            } else {
                ExtendedColorType::Rgb8
            };
            JpegEncoder::new_with_quality(&mut out, 80)
                .write_image(&samples(colour, pixels, seed), width, height, colour)
                .expect("jpeg");
            out = with_segments(out, segments, segment_bytes, seed);
        }
        Kind::Webp(colour) => WebPEncoder::new_lossless(&mut out)
            .write_image(&samples(colour, pixels, seed), width, height, colour)
            .expect("webp"),
        Kind::Gif => GifEncoder::new_with_speed(&mut out, 10)
            .encode(
                &samples(ExtendedColorType::Rgba8, pixels, seed),
                width,
                height,
                ExtendedColorType::Rgba8,
            )
            .expect("gif"),
        Kind::Bmp(colour) => BmpEncoder::new(&mut out)
            .write_image(&samples(colour, pixels, seed), width, height, colour)
            .expect("bmp"),
        Kind::Tiff(colour) => TiffEncoder::new(Cursor::new(&mut out))
            .write_image(&samples(colour, pixels, seed), width, height, colour)
            .expect("tiff"),
    }
    out
}

fn kind() -> impl Strategy<Value = Kind> {
    use ExtendedColorType as C;
    prop_oneof![
        4 => png_layout().prop_map(Kind::Png),
        1 => prop::sample::select(vec![
            C::L8, C::La8, C::L16, C::La16, C::Rgb8, C::Rgb16, C::Rgba8, C::Rgba16,
        ])
            .prop_map(Kind::PngEncoded),
        2 => (any::<bool>(), 0..4_usize, prop_oneof![0..64_usize, 60_000..65_530_usize]).prop_map(
            |(grey, segments, segment_bytes)| Kind::Jpeg {
                grey,
                segments,
                segment_bytes,
            }
        ),
        1 => prop::sample::select(vec![C::L8, C::La8, C::Rgb8, C::Rgba8]).prop_map(Kind::Webp),
        1 => Just(Kind::Gif),
        1 => prop::sample::select(vec![C::L8, C::La8, C::Rgb8, C::Rgba8]).prop_map(Kind::Bmp),
        1 => prop::sample::select(vec![
            C::L8, C::L16, C::Rgb8, C::Rgba8, C::Rgb16, C::Rgba16, C::Rgb32F, C::Rgba32F,
        ])
            .prop_map(Kind::Tiff),
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    (kind(), 1..=48_u32, 1..=48_u32, any::<u64>()).prop_map(|(kind, width, height, seed)| {
        Generated {
            kind,
            width,
            height,
            seed,
            bytes: encode(kind, width, height, seed),
        }
    })
}

/// What image_header claims must hold for whatever bytes it is given.
fn plausible(header: Option<ImageHeader>) -> Result<(), TestCaseError> {
    if let Some(header) = header {
        prop_assert!(header.width > 0 && header.height > 0, "{:?}", header);
        prop_assert!((1..=16).contains(&header.bytes_per_pixel), "{:?}", header);
    }
    Ok(())
}

#[test]
fn headers_of_real_images_give_their_size_and_enough_depth() {
    check(
        "headers_of_real_images_give_their_size_and_enough_depth",
        2000,
        generated(),
        |image| {
            let header =
                image_header(&image.bytes).ok_or_else(|| TestCaseError::fail("no header read"))?;
            prop_assert_eq!((header.width, header.height), (image.width, image.height));
            let decoded = image::load_from_memory(&image.bytes)
                .map_err(|err| TestCaseError::fail(format!("image cannot decode it: {err}")))?;
            prop_assert_eq!(
                (decoded.width(), decoded.height()),
                (image.width, image.height)
            );
            // Memory estimates must not fall short of the buffer a decoder fills.
            prop_assert!(
                header.bytes_per_pixel >= u32::from(decoded.color().bytes_per_pixel()),
                "header says {} bytes per pixel, the decoder fills {:?}",
                header.bytes_per_pixel,
                decoded.color()
            );
            Ok(())
        },
    );
}

#[test]
fn a_cut_header_reads_right_or_not_at_all() {
    check(
        "a_cut_header_reads_right_or_not_at_all",
        1500,
        (
            generated(),
            prop::collection::vec(any::<prop::sample::Index>(), 1..16),
        ),
        |(image, cuts)| {
            let whole = image_header(&image.bytes);
            prop_assert!(whole.is_some());
            // Every length through the first header bytes, then cuts anywhere.
            let lengths = (0..image.bytes.len().min(64))
                .chain(cuts.iter().map(|at| at.index(image.bytes.len())));
            for len in lengths {
                let cut = image_header(&image.bytes[..len]);
                plausible(cut)?;
                // A cut head reads the true size, and a depth at least the true one: a PNG cut
                // before its image data may yet have a transparency chunk, so it is taken as
                // having one (the safe side for a memory estimate).
                if let (Some(cut), Some(whole)) = (cut, whole) {
                    let at = format!("first {} of {} bytes", len, image.bytes.len());
                    prop_assert_eq!(
                        (cut.width, cut.height),
                        (whole.width, whole.height),
                        "{}",
                        at
                    );
                    prop_assert!(cut.bytes_per_pixel >= whole.bytes_per_pixel, "{}", at);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn corrupted_images_never_panic_the_header_reader() {
    check(
        "corrupted_images_never_panic_the_header_reader",
        3000,
        (
            generated(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ),
        |(image, flips)| {
            let mut bytes = image.bytes;
            // Mostly in the header, where a reader trusts lengths and offsets.
            for (at, byte) in flips {
                let i = at.index(bytes.len().min(256));
                bytes[i] = byte;
            }
            plausible(image_header(&bytes))
        },
    );
}

#[test]
fn arbitrary_bytes_never_panic_the_header_reader() {
    let magic: Vec<&'static [u8]> = vec![
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xc0\0\x11\x08",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"RIFF\0\0\0\0WEBPVP8L",
        b"RIFF\0\0\0\0WEBPVP8X",
        b"GIF89a",
        b"BM",
        b"II*\0",
        b"MM\0*",
        b"II*\0\x08\0\0\0",
    ];
    check(
        "arbitrary_bytes_never_panic_the_header_reader",
        10000,
        (
            prop::option::of(prop::sample::select(magic)),
            prop::collection::vec(any::<u8>(), 0..512),
        ),
        |(magic, rest)| {
            let bytes = [magic.unwrap_or_default(), rest.as_slice()].concat();
            plausible(image_header(&bytes))
        },
    );
}

#[test]
fn essence_is_the_bare_lowercase_media_type() {
    let content_type = prop_oneof![
        any::<String>(),
        (
            "[ \t]{0,2}",
            prop::sample::select(vec!["image/png", "Image/PNG", "IMAGE/JPEG", "text/csv", ""]),
            "[ \t]{0,2}",
            prop::option::of("; ?[a-zA-Z=\"-]{0,12}"),
        )
            .prop_map(|(before, media, after, parameters)| format!(
                "{before}{media}{after}{}",
                parameters.unwrap_or_default()
            )),
    ];
    check(
        "essence_is_the_bare_lowercase_media_type",
        5000,
        content_type,
        |content_type| {
            let media = essence(&content_type);
            prop_assert!(!media.contains(';'));
            prop_assert_eq!(media.trim(), media.as_str());
            prop_assert!(!media.chars().any(|c| c.is_ascii_uppercase()));
            prop_assert_eq!(essence(&media), media.clone());
            // The media type is what comes before any parameters, whatever its case.
            let before = content_type.split(';').next().unwrap_or_default().trim();
            prop_assert!(media.eq_ignore_ascii_case(before));
            Ok(())
        },
    );
}
