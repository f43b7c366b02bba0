//! Media types as HTTP headers carry them, and what an image's header says of its size.

/// The media type of a `Content-Type` value without its parameters, lowercase:
/// `Image/PNG; q=1` → `image/png`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Bytes of a file's start that [`image_header`] needs at most: a JPEG's size comes after its
/// EXIF and other application segments, which phones fill with tens of kilobytes.
pub const IMAGE_HEADER_BYTES: usize = 256 * 1024;

/// An image's dimensions and decoded depth, read from its header without decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel of the buffer a decoder fills at the image's stored depth: 8 for a
    /// 16-bit RGBA PNG, 3 for a JPEG. Where the header does not say (a TIFF), the widest
    /// the format allows, so memory estimates err on the safe side.
    pub bytes_per_pixel: u32,
    /// Frames of an animated GIF or WebP (see [`frame_count`]); 1 for a still image.
    pub frames: u32,
}

/// The header of a JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF image at the start of `head`, or `None`
/// when `head` is not one (or is cut before its size). Never panics, whatever the bytes.
pub fn image_header(head: &[u8]) -> Option<ImageHeader> {
    use imagesize::ImageType;
    let kind = imagesize::image_type(head).ok()?;
    let bytes_per_pixel = match kind {
        ImageType::Jpeg => 3,
        ImageType::Png => png_bytes_per_pixel(head)?,
        ImageType::Webp | ImageType::Gif | ImageType::Bmp => 4,
        // Float RGBA, the widest a TIFF decodes to.
        ImageType::Tiff => 16,
        // The filter's decoder makes 8-bit RGB or RGBA, whatever the stored depth.
        ImageType::Heif(imagesize::Compression::Av1) => 4,
        _ => return None,
    };
    let size = imagesize::blob_size(head).ok()?;
    let width = u32::try_from(size.width).ok().filter(|w| *w > 0)?;
    let height = u32::try_from(size.height).ok().filter(|h| *h > 0)?;
    let frames = match kind {
        ImageType::Gif | ImageType::Webp => frame_count(head),
        _ => 1,
    };
    Some(ImageHeader {
        width,
        height,
        bytes_per_pixel,
        frames,
    })
}

/// How many frames the GIF or WebP at the start of `data` has, counted from its block or chunk
/// structure without decoding a pixel; 1 for any other image, and for one that does not read.
/// Of a file cut short (storage keeps a file's first [`IMAGE_HEADER_BYTES`] for this), the
/// frames seen before the cut: a lower bound, at least 2 when the header says it animates.
pub fn frame_count(data: &[u8]) -> u32 {
    count_frames(data).frames
}

/// What [`count_frames`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCount {
    pub frames: u32,
    /// Whether the structure was read to its end. When not (a file cut short or corrupt),
    /// `frames` is a lower bound.
    pub complete: bool,
}

/// [`frame_count`], saying whether the count is whole.
pub fn count_frames(data: &[u8]) -> FrameCount {
    let counted = std::panic::catch_unwind(|| match imagesize::image_type(data) {
        Ok(imagesize::ImageType::Gif) => gif_frames(data),
        Ok(imagesize::ImageType::Webp) => webp_frames(data),
        _ => FrameCount {
            frames: 1,
            complete: true,
        },
    });
    // The parsers are fuzzed, not proven; storage runs this on every upload's first bytes.
    counted.unwrap_or(FrameCount {
        frames: 1,
        complete: false,
    })
}

fn gif_frames(data: &[u8]) -> FrameCount {
    let mut options = gif::DecodeOptions::new();
    // Walks the data blocks without running the LZW decoder.
    options.skip_frame_decoding(true);
    let Ok(mut decoder) = options.read_info(data) else {
        return FrameCount {
            frames: 1,
            complete: false,
        };
    };
    let mut frames = 0u32;
    let complete = loop {
        match decoder.next_frame_info() {
            Ok(Some(_)) => frames = frames.saturating_add(1),
            Ok(None) => break true,
            // A cut or corrupt block ends the count: what was seen is still a lower bound.
            Err(_) => break false,
        }
    };
    FrameCount {
        frames: frames.max(1),
        complete,
    }
}

fn webp_frames(data: &[u8]) -> FrameCount {
    let frames = match image_webp::WebPDecoder::new(std::io::Cursor::new(data)) {
        Ok(decoder) if decoder.is_animated() => decoder.num_frames().max(2),
        Ok(_) => 1,
        // A cut file does not parse; its VP8X header (the first chunk, at byte 12) still
        // says whether it animates: flag bit 1 of the byte after the chunk's size.
        Err(_) => {
            let frames = match data.get(12..21) {
                Some([b'V', b'P', b'8', b'X', _, _, _, _, flags]) if flags & 0x02 != 0 => 2,
                _ => 1,
            };
            return FrameCount {
                frames,
                complete: false,
            };
        }
    };
    FrameCount {
        frames,
        complete: true,
    }
}

/// A PNG's decoded bytes per pixel from its IHDR chunk (bit depth at byte 24, colour type at
/// 25): palette images expand to RGBA, 16-bit samples take two bytes, and a grey or RGB image
/// with a `tRNS` chunk decodes with an alpha channel.
fn png_bytes_per_pixel(head: &[u8]) -> Option<u32> {
    let (&depth, &colour) = (head.get(24)?, head.get(25)?);
    let channels = match colour {
        0 => 1,
        2 => 3,
        3 => return Some(4),
        4 => 2,
        6 => 4,
        _ => return None,
    };
    let alpha = u32::from(matches!(colour, 0 | 2) && png_has_transparency(head));
    Some((channels + alpha) * if depth == 16 { 2 } else { 1 })
}

/// Whether a `tRNS` chunk comes before the image data: chunks after the 8-byte signature are
/// length (4 bytes), type (4), data, CRC (4). A head cut before the image data counts as
/// transparent, the safe side for an estimate.
fn png_has_transparency(head: &[u8]) -> bool {
    let mut at = 8;
    while let Some(chunk) = head.get(at..at + 8) {
        let length = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
        match &chunk[4..8] {
            b"tRNS" => return true,
            b"IDAT" | b"IEND" => return false,
            _ => at = at.saturating_add(length).saturating_add(12),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_case_go() {
        assert_eq!(essence("Image/PNG; q=1"), "image/png");
        assert_eq!(essence(" application/json "), "application/json");
        assert_eq!(essence(""), "");
    }

    #[test]
    fn an_avif_header_reads_its_size() {
        let avif = include_bytes!("../../filter/tests/data/kite-rgba-320x200.avif");
        assert_eq!(
            image_header(avif),
            Some(ImageHeader {
                width: 320,
                height: 200,
                bytes_per_pixel: 4,
                frames: 1,
            })
        );
        assert_eq!(image_header(&avif[..12]), None);
    }

    #[test]
    fn animations_count_their_frames_from_the_header() {
        // Made by libvips: see services/filter/tests/data/SOURCES.md.
        let gif = include_bytes!("../../filter/tests/data/kite-4-frames.gif");
        let webp = include_bytes!("../../filter/tests/data/kite-4-frames.webp");
        for animation in [&gif[..], &webp[..]] {
            assert_eq!(frame_count(animation), 4);
            let header = image_header(animation).unwrap();
            assert_eq!((header.width, header.height, header.frames), (80, 50, 4));
        }
        // Cut short, as storage reads a big file: a lower bound, at least 2 when animated.
        let cut = |data: &[u8], len: usize| frame_count(&data[..len]);
        assert!((1..4).contains(&cut(gif, gif.len() / 2)));
        assert_eq!(cut(webp, webp.len() / 2), 2);
        let still = include_bytes!("../../filter/tests/data/kite-rgba-320x200.png");
        assert_eq!(frame_count(still), 1);
        assert_eq!(frame_count(b"GIF89a"), 1);
    }
}
