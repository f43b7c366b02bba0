//! The input's metadata carried into an output that asks for it (`strip=false`,
//! `metadata=copyright`, `keep_icc`): which parts go, and how each container takes them.
//!
//! | output | EXIF | XMP | ICC |
//! |---|---|---|---|
//! | JPEG | APP1 | APP1 (up to 64 KB; no extended XMP) | APP2 |
//! | PNG | eXIf | iTXt `XML:com.adobe.xmp` | iCCP |
//! | WebP | EXIF | XMP | ICCP (libwebp's mux) |
//! | TIFF | – | – | the ICC tag |
//! | AVIF | the Exif item | – | – (ravif writes no ICC box) |
//! | GIF, BMP | – | – | – |

use std::io::Cursor;

use image::metadata::Orientation;
use pixelmesh_pipeline::formats::{Encoding, Metadata};

use crate::codec::InputMetadata;

/// The most a JPEG marker segment holds, its two length bytes excluded.
const JPEG_SEGMENT_MAX: usize = 65533;

/// What an output carries: `encoding`'s choice of `input`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub exif: Vec<u8>,
    pub xmp: Vec<u8>,
    pub icc: Option<Vec<u8>>,
}

impl Outgoing {
    pub fn new(encoding: &Encoding, input: &InputMetadata) -> Outgoing {
        let exif = match encoding.metadata {
            Metadata::None => Vec::new(),
            Metadata::Copyright => copyright_exif(&input.exif),
            Metadata::All => upright_exif(&input.exif),
        };
        let xmp = if encoding.metadata == Metadata::All {
            upright_xmp(&input.xmp)
        } else {
            Vec::new()
        };
        // The pixels are in this profile only when the decode kept it for this encoding.
        let icc = input.icc.clone().filter(|_| encoding.embeds_icc());
        Outgoing { exif, xmp, icc }
    }

    pub fn is_empty(&self) -> bool {
        self.exif.is_empty() && self.xmp.is_empty() && self.icc.is_none()
    }

    /// The APP2 segments that carry the profile in a JPEG; none without one.
    pub fn jpeg_icc(&self) -> Vec<Vec<u8>> {
        self.icc
            .as_deref()
            .and_then(jpeg_icc_segments)
            .unwrap_or_default()
    }

    /// The APP1 segments for a JPEG: EXIF, then XMP; a part too big for one segment is left
    /// out (EXIF cannot be bigger in a JPEG; extended XMP is not written).
    pub fn jpeg_app1(&self) -> Vec<Vec<u8>> {
        [(b"Exif\0\0".as_slice(), &self.exif), (XMP_APP1, &self.xmp)]
            .into_iter()
            .filter(|(prefix, data)| {
                !data.is_empty() && prefix.len() + data.len() <= JPEG_SEGMENT_MAX
            })
            .map(|(prefix, data)| [prefix, data.as_slice()].concat())
            .collect()
    }
}

/// The APP2 segments that hold `icc` in a JPEG: `ICC_PROFILE\0`, the segment's number from
/// 1, their count, then the piece. Written here because the mozjpeg crate's own
/// `write_icc_profile` numbers from 0, which libjpeg's reader (and ours) rejects. `None` for a
/// profile too big for 255 segments (16 MB; no real one is).
pub fn jpeg_icc_segments(icc: &[u8]) -> Option<Vec<Vec<u8>>> {
    const PREFIX: &[u8] = b"ICC_PROFILE\0";
    let chunks: Vec<&[u8]> = icc.chunks(JPEG_SEGMENT_MAX - PREFIX.len() - 2).collect();
    let count = u8::try_from(chunks.len()).ok()?;
    Some(
        (1..=count)
            .zip(chunks)
            .map(|(number, chunk)| [PREFIX, &[number, count], chunk].concat())
            .collect(),
    )
}

/// The prefix of the APP1 segment that holds a JPEG's XMP packet.
pub const XMP_APP1: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// The EXIF block with its orientation set to upright: the pixels were turned already, and a
/// viewer reading the old tag would turn them again.
fn upright_exif(exif: &[u8]) -> Vec<u8> {
    let mut exif = exif.to_vec();
    // The orientation it had is of no use: decoding already applied it.
    let _applied = Orientation::remove_from_exif_chunk(&mut exif);
    exif
}

/// The XMP packet with its `tiff:Orientation` set to 1 (upright), as [`upright_exif`] does for
/// the EXIF tag: a viewer that reads XMP would otherwise turn the pixels again. One digit is
/// written over another, so the packet keeps its length and padding. Hand-written: the one
/// full XMP library (Adobe's toolkit, `xmp_toolkit`) is C++, which the static image avoids.
fn upright_xmp(xmp: &[u8]) -> Vec<u8> {
    const NAME: &[u8] = b"tiff:Orientation";
    let mut xmp = xmp.to_vec();
    let mut from = 0;
    while let Some(found) = memchr::memmem::find(&xmp[from..], NAME) {
        let mut at = from + found + NAME.len();
        from = at;
        let skip_blank = |at: &mut usize| {
            while xmp.get(*at).is_some_and(u8::is_ascii_whitespace) {
                *at += 1;
            }
        };
        // An attribute, `tiff:Orientation="6"`, or an element, `<tiff:Orientation>6<`.
        skip_blank(&mut at);
        match xmp.get(at) {
            Some(b'=') => {
                at += 1;
                skip_blank(&mut at);
                if !matches!(xmp.get(at), Some(b'"' | b'\'')) {
                    continue;
                }
                at += 1;
            }
            Some(b'>') => {
                at += 1;
                skip_blank(&mut at);
            }
            _ => continue,
        }
        let single_digit = !xmp.get(at + 1).is_some_and(u8::is_ascii_digit);
        if let Some(value @ b'1'..=b'8') = xmp.get_mut(at)
            && single_digit
        {
            *value = b'1';
        }
    }
    xmp
}

/// A new EXIF block with only the input's Artist and Copyright tags; empty when it has
/// neither, or its EXIF does not read.
fn copyright_exif(exif: &[u8]) -> Vec<u8> {
    if exif.is_empty() {
        return Vec::new();
    }
    let Ok(parsed) = exif::Reader::new().read_raw(exif.to_vec()) else {
        return Vec::new();
    };
    let kept: Vec<&exif::Field> = parsed
        .fields()
        .filter(|field| {
            field.ifd_num == exif::In::PRIMARY
                && matches!(field.tag, exif::Tag::Artist | exif::Tag::Copyright)
        })
        .collect();
    if kept.is_empty() {
        return Vec::new();
    }
    let mut writer = exif::experimental::Writer::new();
    for field in kept {
        writer.push_field(field);
    }
    let mut out = Cursor::new(Vec::new());
    match writer.write(&mut out, parsed.little_endian()) {
        Ok(()) => out.into_inner(),
        Err(_) => Vec::new(),
    }
}

/// `png` with an iTXt chunk holding `xmp` after its header chunk, where Adobe's tools put it.
/// image's PNG encoder writes ICC and EXIF but not XMP; a chunk is its length, type, data and
/// a CRC-32 of type and data.
pub fn png_with_xmp(png: Vec<u8>, xmp: &[u8]) -> Vec<u8> {
    // The 8-byte signature, then IHDR: 4 length + 4 type + 13 data + 4 CRC.
    const AFTER_IHDR: usize = 8 + 25;
    if xmp.is_empty() || png.len() < AFTER_IHDR || xmp.len() > (i32::MAX as usize) / 2 {
        return png;
    }
    // Keyword, no compression (flag, method), empty language tag and translated keyword.
    let data = [b"XML:com.adobe.xmp\0\0\0\0\0".as_slice(), xmp].concat();
    let body = [b"iTXt".as_slice(), &data].concat();
    let mut out = Vec::with_capacity(png.len() + body.len() + 8);
    out.extend_from_slice(&png[..AFTER_IHDR]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// `webp` (a still image as libwebp or image's encoder wrote it) in the extended format with
/// `outgoing`'s chunks, by libwebp's own muxer, which also sets the VP8X flags.
#[allow(unsafe_code)]
pub fn webp_with(webp: &[u8], outgoing: &Outgoing) -> Result<Vec<u8>, String> {
    use libwebp_sys as sys;
    let chunks = [
        (c"ICCP", outgoing.icc.as_deref().unwrap_or_default()),
        (c"EXIF", outgoing.exif.as_slice()),
        (c"XMP ", outgoing.xmp.as_slice()),
    ];
    let data = |bytes: &[u8]| sys::WebPData {
        bytes: bytes.as_ptr(),
        size: bytes.len(),
    };
    // SAFETY: every WebPData points into a slice that outlives the call it is passed to, and
    // copy_data = 1 makes the muxer copy what it keeps. The mux is deleted, and the assembled
    // buffer (owned by libwebp) copied out and freed, on every path.
    unsafe {
        let mux = sys::WebPMuxCreateInternal(&data(webp), 1, sys::WebPGetMuxABIVersion());
        if mux.is_null() {
            return Err("libwebp could not read the encoded image to add its metadata".into());
        }
        let mut result = Ok(());
        for (fourcc, bytes) in chunks.iter().filter(|(_, bytes)| !bytes.is_empty()) {
            let status = sys::WebPMuxSetChunk(mux, fourcc.as_ptr(), &data(bytes), 1);
            if status != sys::WebPMuxError::WEBP_MUX_OK {
                result = Err(format!("libwebp refused the {fourcc:?} chunk: {status:?}"));
                break;
            }
        }
        let mut assembled = sys::WebPData::default();
        if result.is_ok() {
            let status = sys::WebPMuxAssemble(mux, &mut assembled);
            if status != sys::WebPMuxError::WEBP_MUX_OK {
                result = Err(format!("libwebp could not assemble the file: {status:?}"));
            }
        }
        sys::WebPMuxDelete(mux);
        let out = take_webp_data(&mut assembled);
        result.map(|()| out)
    }
}

/// Copies out a buffer libwebp assembled, and frees it; empty when there is none.
///
/// # Safety
///
/// `data` is empty (as `WebPData::default()` makes it) or was filled by libwebp and not
/// freed since.
#[allow(unsafe_code)]
pub(crate) unsafe fn take_webp_data(data: &mut libwebp_sys::WebPData) -> Vec<u8> {
    let out = if data.bytes.is_null() {
        Vec::new()
    } else {
        // SAFETY: libwebp's buffer of `size` bytes, alive until the clear below.
        unsafe { std::slice::from_raw_parts(data.bytes, data.size).to_vec() }
    };
    // SAFETY: as the caller promises; clearing an empty WebPData is a no-op.
    unsafe { libwebp_sys::WebPDataClear(data) };
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::tests::{mean_abs_diff, png_with_icc, system_profile};
    use crate::codec::{self, DecodeOptions, Limits};
    use crate::engine;
    use crate::ops::{FileFormat, Pipeline};
    use crate::testdata::gradient;

    pub(crate) const XMP: &[u8] = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/jpeg"/></rdf:RDF></x:xmpmeta>"#;

    /// An EXIF block with a camera, an author, a copyright and `orientation`.
    pub(crate) fn exif(orientation: u16) -> Vec<u8> {
        let ascii = |tag, text: &str| exif::Field {
            tag,
            ifd_num: exif::In::PRIMARY,
            value: exif::Value::Ascii(vec![text.as_bytes().to_vec()]),
        };
        let fields = [
            ascii(exif::Tag::Make, "Acme"),
            ascii(exif::Tag::Artist, "Ada Lovelace"),
            ascii(exif::Tag::Copyright, "CC BY 4.0"),
            exif::Field {
                tag: exif::Tag::Orientation,
                ifd_num: exif::In::PRIMARY,
                value: exif::Value::Short(vec![orientation]),
            },
        ];
        let mut writer = exif::experimental::Writer::new();
        for field in &fields {
            writer.push_field(field);
        }
        let mut out = Cursor::new(Vec::new());
        writer.write(&mut out, false).unwrap();
        out.into_inner()
    }

    /// The tags of an EXIF block, by name, with their values.
    fn tags(exif: &[u8]) -> Vec<(String, String)> {
        if exif.is_empty() {
            return Vec::new();
        }
        let parsed = exif::Reader::new().read_raw(exif.to_vec()).unwrap();
        parsed
            .fields()
            .map(|f| (f.tag.to_string(), f.display_value().to_string()))
            .collect()
    }

    /// A 64x48 JPEG turned by EXIF orientation 6 (so 48x64 upright), with XMP and `icc`.
    fn tagged_jpeg(icc: &[u8]) -> Vec<u8> {
        let plain = codec::encode(&gradient(64, 48, false), FileFormat::Jpeg, 90).unwrap();
        let mut segments = vec![
            (0xE1, [b"Exif\0\0".as_slice(), &exif(6)].concat()),
            (0xE1, [XMP_APP1, XMP].concat()),
        ];
        segments.push((0xE2, [b"ICC_PROFILE\0\x01\x01".as_slice(), icc].concat()));
        let mut jpeg = plain[..2].to_vec();
        for (marker, data) in segments {
            jpeg.extend_from_slice(&[0xFF, marker]);
            jpeg.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
            jpeg.extend_from_slice(&data);
        }
        jpeg.extend_from_slice(&plain[2..]);
        jpeg
    }

    fn run(input: &[u8], text: &str) -> (engine::Processed, codec::Decoded) {
        let pipeline = Pipeline::from_text(text).unwrap();
        let out = engine::process(input, &pipeline, &Limits::default()).unwrap();
        let keep = DecodeOptions {
            keep_icc: true,
            ..DecodeOptions::default()
        };
        let back = codec::decode_with(&out.bytes, &Limits::default(), &keep).unwrap();
        (out, back)
    }

    #[test]
    fn strip_false_carries_exif_upright_xmp_and_the_profile_where_the_format_holds_them() {
        let (_, adobe) = system_profile("compatibleWithAdobeRGB1998.icc");
        let input = tagged_jpeg(&adobe);
        for (format, exif, xmp, icc) in [
            ("jpeg", true, true, true),
            ("jpeg,progressive=true", true, true, true),
            ("png", true, true, true),
            ("webp,q=80", true, true, true),
            ("webp,lossless=true", true, true, true),
            ("tiff", false, false, true),
            ("gif", false, false, false),
        ] {
            let (out, back) = run(&input, &format!("format:{format},strip=false"));
            assert_eq!((out.width, out.height), (48, 64), "{format}: upright");
            let tags = tags(&back.exif);
            if exif {
                assert!(
                    tags.contains(&(
                        "Orientation".into(),
                        "row 0 at top and column 0 at left".into()
                    )),
                    "{format}: orientation reset to upright, got {tags:?}"
                );
                for tag in ["Make", "Artist", "Copyright"] {
                    assert!(
                        tags.iter().any(|(t, _)| t == tag),
                        "{format}: {tag} in {tags:?}"
                    );
                }
            } else {
                assert!(tags.is_empty(), "{format}: {tags:?}");
            }
            assert_eq!(back.xmp == XMP, xmp, "{format}: xmp {:?}", back.xmp.len());
            // image's TIFF reader does not return a profile stored as bytes, as its writer
            // stores it (libvips reads it), so TIFF's is looked for in the file.
            let carried = if format == "tiff" {
                out.bytes.windows(adobe.len()).any(|w| w == adobe)
            } else {
                back.icc.as_deref() == Some(&adobe[..])
            };
            assert_eq!(carried, icc, "{format}: icc");
        }
        // AVIF keeps the EXIF (as its Exif item), not the profile: its pixels go to sRGB.
        let (avif, _) = run(&input, "format:avif,strip=false");
        let needle = b"Ada Lovelace";
        assert!(avif.bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn copyright_keeps_only_the_author_and_the_copyright_and_the_default_keeps_nothing() {
        let (_, adobe) = system_profile("compatibleWithAdobeRGB1998.icc");
        let input = tagged_jpeg(&adobe);
        for format in ["jpeg", "png", "webp,q=80"] {
            let (_, back) = run(&input, &format!("format:{format},metadata=copyright"));
            let mut names: Vec<String> = tags(&back.exif).into_iter().map(|(t, _)| t).collect();
            names.sort();
            assert_eq!(names, ["Artist", "Copyright"], "{format}");
            assert!(back.xmp.is_empty() && back.icc.is_none(), "{format}");

            let (_, plain) = run(&input, &format!("format:{format}"));
            assert!(plain.exif.is_empty() && plain.xmp.is_empty(), "{format}");
            assert_eq!(plain.colour_profile, None, "{format}: no profile embedded");
        }
    }

    #[test]
    fn keep_icc_leaves_the_pixels_in_the_profile_and_embeds_it() {
        let (_, adobe) = system_profile("compatibleWithAdobeRGB1998.icc");
        let image = gradient(40, 30, false);
        let input = png_with_icc(&image, Some(adobe.clone()));
        let (kept, back) = run(&input, "format:png,keep_icc=true");
        assert_eq!(back.image, image, "pixels as stored");
        assert_eq!(back.icc.as_deref(), Some(&adobe[..]));
        assert!(
            matches!(&back.colour_profile, Some(crate::colour::Applied::Embedded(name)) if name.contains("Adobe")),
            "{:?}",
            back.colour_profile
        );
        // Without it the pixels are converted, and nothing says Adobe RGB any more.
        let (converted, back) = run(&input, "format:png");
        assert_ne!(converted.bytes, kept.bytes);
        assert!(back.icc.is_none() && back.colour_profile.is_none());
        assert!(mean_abs_diff(&back.image, &image) > 1.0);
        // GIF cannot hold the profile, so even when asked its pixels are made sRGB.
        let (_, gif) = run(&input, "format:gif,keep_icc=true");
        let (_, srgb_gif) = run(&input, "format:gif");
        assert_eq!(gif.image, srgb_gif.image);
    }

    #[test]
    fn copyright_exif_is_empty_without_those_tags_or_with_broken_exif() {
        assert!(copyright_exif(b"not exif").is_empty());
        let camera_only = {
            let field = exif::Field {
                tag: exif::Tag::Make,
                ifd_num: exif::In::PRIMARY,
                value: exif::Value::Ascii(vec![b"Acme".to_vec()]),
            };
            let mut writer = exif::experimental::Writer::new();
            writer.push_field(&field);
            let mut out = Cursor::new(Vec::new());
            writer.write(&mut out, true).unwrap();
            out.into_inner()
        };
        assert!(copyright_exif(&camera_only).is_empty());
    }

    #[test]
    fn a_big_profile_is_split_into_numbered_jpeg_segments() {
        let icc: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let segments = jpeg_icc_segments(&icc).unwrap();
        assert_eq!(segments.len(), 3);
        for (i, segment) in segments.iter().enumerate() {
            assert!(segment.len() <= JPEG_SEGMENT_MAX);
            assert_eq!(
                &segment[..14],
                [b"ICC_PROFILE\0".as_slice(), &[i as u8 + 1, 3]].concat()
            );
        }
        let joined: Vec<u8> = segments.iter().flat_map(|s| s[14..].to_vec()).collect();
        assert_eq!(joined, icc);
        assert!(jpeg_icc_segments(&vec![0; 256 * 65_600]).is_none());
    }

    #[test]
    fn the_xmp_orientation_is_reset_to_upright_in_either_form_and_nothing_else_moves() {
        let attribute = br#"<rdf:Description tiff:Orientation = '6' tiff:Make="x"/>"#;
        let element = b"<tiff:Orientation>\n 8</tiff:Orientation><exif:X>6</exif:X>";
        for (xmp, expected) in [
            (
                &attribute[..],
                &br#"<rdf:Description tiff:Orientation = '1' tiff:Make="x"/>"#[..],
            ),
            (
                &element[..],
                &b"<tiff:Orientation>\n 1</tiff:Orientation><exif:X>6</exif:X>"[..],
            ),
            // Not an orientation: left alone.
            (
                &b"<tiff:Orientation>12</tiff:Orientation>"[..],
                &b"<tiff:Orientation>12</tiff:Orientation>"[..],
            ),
            (&b"tiff:Orientation"[..], &b"tiff:Orientation"[..]),
            (XMP, XMP),
        ] {
            assert_eq!(
                upright_xmp(xmp),
                expected,
                "{}",
                String::from_utf8_lossy(xmp)
            );
        }
        let encoding = Encoding {
            metadata: Metadata::All,
            ..Encoding::new(FileFormat::Jpeg)
        };
        let input = InputMetadata {
            xmp: attribute.to_vec(),
            ..InputMetadata::default()
        };
        assert_eq!(
            Outgoing::new(&encoding, &input).xmp,
            br#"<rdf:Description tiff:Orientation = '1' tiff:Make="x"/>"#
        );
    }

    #[test]
    fn an_xmp_chunk_keeps_the_png_valid() {
        let png = codec::encode(&gradient(8, 8, true), FileFormat::Png, 85).unwrap();
        let with = png_with_xmp(png.clone(), XMP);
        let decoded = codec::decode(&with, &Limits::default()).unwrap();
        assert_eq!(decoded.xmp, XMP);
        assert_eq!(
            decoded.image,
            codec::decode(&png, &Limits::default()).unwrap().image
        );
        assert_eq!(png_with_xmp(png.clone(), b""), png);
    }
}
