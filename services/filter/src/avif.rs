//! AVIF in and out.
//!
//! Decoding: mp4parse (Firefox's ISOBMFF parser) reads the HEIF container: the primary item,
//! its alpha item, the `colr` ICC profile and the `irot`/`imir` display transforms. rav1d (the
//! Rust port of dav1d, with dav1d's assembly) decodes each AV1 item on the calling thread, and
//! yuv converts the planes to RGB. This is what the avif-decode crate does; we call the crates
//! ourselves because avif-decode needs rustc 1.98 (we build with 1.95) and starts one decoder
//! thread per core, where a filter already decodes one image per core. 10- and 12-bit images
//! are rounded to 8 bits before the conversion: every bitmap is 8-bit. The image comes out
//! upright, as a JPEG with an EXIF orientation does: rotated by `irot`, then mirrored by
//! `imir`, the order MIAF sets. Its ICC profile is returned for the codec to apply or keep,
//! and its Exif item, found by kamadak-exif's HEIF reader (mp4parse skips it), and its XMP
//! item (read here, see [`xmp`]) for the output to carry on request.
//!
//! Grid (tiled) images and image sequences are refused with the parser's reason.
//!
//! Encoding: ravif (rav1e), 8-bit 4:4:4 YCbCr, on the calling thread. `effort` 0..=9 maps to
//! rav1e's speed 10..=1, so the default effort 4 is speed 6: `scripts/bench-compare` measured
//! it against libvips' effort 4 (libaom) at quality 60 (BENCHMARKS.md, "Per format").

// rav1d's public API is dav1d's C API, raw pointers and all; every unsafe block below says
// why its call is sound.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::ptr::NonNull;

use rav1d::Dav1dResult;
use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dLogger, Dav1dSettings};
use rav1d::include::dav1d::headers::{
    DAV1D_MC_BT470BG, DAV1D_MC_BT601, DAV1D_MC_BT709, DAV1D_MC_BT2020_CL, DAV1D_MC_BT2020_NCL,
    DAV1D_MC_FCC, DAV1D_MC_IDENTITY, DAV1D_MC_SMPTE240, DAV1D_MC_UNKNOWN, DAV1D_PIXEL_LAYOUT_I400,
    DAV1D_PIXEL_LAYOUT_I420, DAV1D_PIXEL_LAYOUT_I422, DAV1D_PIXEL_LAYOUT_I444,
};
use rav1d::include::dav1d::picture::Dav1dPicture;
use rav1d::src::lib::{
    dav1d_close, dav1d_data_create, dav1d_data_unref, dav1d_default_settings, dav1d_get_picture,
    dav1d_open, dav1d_picture_unref, dav1d_send_data,
};
use yuv::{YuvPlanarImage, YuvRange, YuvStandardMatrix};

use pixelmesh_pipeline::formats::{Encoding, MAX_EFFORT};
use pixelmesh_pipeline::ops::rotate::TRANSPARENT;
use pixelmesh_pipeline::ops::{Flip, Flop, Rotate};
use pixelmesh_pipeline::{Bitmap, FileFormat};

use crate::codec::{DecodeError, Limits};

/// The upright width and height of an AVIF's primary item, read from its AV1 sequence header
/// without decoding and turned by its `irot`, and whether it has an alpha item; `None` if the
/// container or the header does not read. Never panics: a parser's panic on malformed boxes
/// is caught and counts as unreadable.
pub(crate) fn dimensions(input: &[u8]) -> Option<(u32, u32, bool)> {
    std::panic::catch_unwind(|| {
        let container = Container::read(input).ok()?;
        let (width, height) = container.upright_size();
        Some((width, height, container.alpha().is_some()))
    })
    .ok()
    .flatten()
}

/// A decoded AVIF: upright, 8-bit, with the ICC profile its container carries (not applied)
/// and its EXIF block.
pub(crate) struct Still {
    pub image: Bitmap,
    /// The layout the AV1 data was stored in: `yuv420p8`, `yuv444p10`…
    pub colour_type: String,
    pub icc: Option<Vec<u8>>,
    /// Empty when there is none, or it does not read.
    pub exif: Vec<u8>,
    /// The XMP packet; empty when there is none, or it does not read.
    pub xmp: Vec<u8>,
}

/// Decodes `input` to an upright 8-bit RGB or RGBA bitmap within `limits`.
pub(crate) fn decode(input: &[u8], limits: &Limits) -> Result<Still, DecodeError> {
    let container = Container::read(input).map_err(corrupt)?;
    let (width, height) = container.stored;
    crate::codec::check_pixels(width, height, limits)?;
    let mut decoder = Decoder::new(limits.max_pixels)?;
    let colour = decoder.decode(container.primary())?;
    let alpha_item = container.alpha();
    let mut image = colour.to_rgb(alpha_item.is_some())?;
    let colour_type = colour.layout_name();
    drop(colour);
    if let Some(alpha) = alpha_item {
        let alpha = decoder.decode(alpha)?;
        alpha.write_alpha(&mut image, container.context.premultiplied_alpha)?;
    }
    // The decoder's frames go before a quarter turn copies the image, so the budget's 4 bytes
    // a pixel for them (pipeline's budget/codecs.rs) also cover the turned copy.
    drop(decoder);
    Ok(Still {
        image: container.transform.apply(image)?,
        colour_type,
        icc: container.icc(),
        exif: exif(input),
        xmp: xmp(input).unwrap_or_default(),
    })
}

/// The EXIF block of `input`'s Exif item. kamadak-exif reads at most 128 KiB of it and only
/// as much as the file holds, whatever the boxes claim. A block that does not parse is left
/// out, as for the other formats: the pixels are fine without it.
fn exif(input: &[u8]) -> Vec<u8> {
    exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(input))
        .map(|exif| exif.buf().to_vec())
        .unwrap_or_default()
}

/// Largest XMP packet read from an AVIF. Real ones are a few KB; JPEG's APP1 holds 64 KB.
const MAX_XMP_BYTES: usize = 1 << 20;

/// The XMP packet of `input`: the data of its `mime` item whose content type is
/// `application/rdf+xml`, found through the item's entry in `iinf` and its extents in `iloc`,
/// inside the top-level `meta` box. Hand-written because neither mp4parse nor kamadak-exif
/// reads that item, and the walk is short. `None` when there is no such item, when it is
/// over [`MAX_XMP_BYTES`], or when any box it passes through does not read: the pixels are
/// fine without it, and a packet is never cut short.
fn xmp(input: &[u8]) -> Option<Vec<u8>> {
    let meta = find_box(input, b"meta")?.get(4..)?;
    let id = xmp_item(find_box(meta, b"iinf")?)?;
    let mut xmp = Vec::new();
    for (offset, length) in item_extents(find_box(meta, b"iloc")?, id)? {
        let (offset, length) = (usize::try_from(offset).ok()?, usize::try_from(length).ok()?);
        if length > MAX_XMP_BYTES - xmp.len() {
            return None;
        }
        xmp.extend_from_slice(input.get(offset..offset.checked_add(length)?)?);
    }
    Some(xmp)
}

/// The ID of the XMP item among the `infe` entries of an `iinf` box's body.
fn xmp_item(iinf: &[u8]) -> Option<u32> {
    let mut body = Bytes(iinf);
    let version = body.uint(1)?;
    body.take(3)?;
    body.uint(if version == 0 { 2 } else { 4 })?;
    let mut boxes = body.0;
    while let Some((kind, infe, rest)) = next_box(boxes) {
        boxes = rest;
        if &kind != b"infe" {
            continue;
        }
        let mut infe = Bytes(infe);
        let version = infe.uint(1)?;
        infe.take(3)?;
        // Versions 0 and 1 predate item types.
        if version < 2 {
            continue;
        }
        let id = infe.uint(if version == 2 { 2 } else { 4 })?;
        infe.uint(2)?;
        let item_type = infe.take(4)?;
        infe.c_string()?;
        if item_type == b"mime" && infe.c_string()? == b"application/rdf+xml" {
            return u32::try_from(id).ok();
        }
    }
    None
}

/// The file offsets and lengths of item `id`'s data, from an `iloc` box's body; `None` for
/// data stored other than in this file (another construction method, or data reference).
fn item_extents(iloc: &[u8], id: u32) -> Option<Vec<(u64, u64)>> {
    let mut body = Bytes(iloc);
    let version = body.uint(1)?;
    body.take(3)?;
    let sizes = body.uint(1)?;
    let (offset_size, length_size) = ((sizes >> 4) as usize, (sizes & 15) as usize);
    let sizes = body.uint(1)?;
    let base_size = (sizes >> 4) as usize;
    let index_size = if version > 0 {
        (sizes & 15) as usize
    } else {
        0
    };
    let items = body.uint(if version < 2 { 2 } else { 4 })?;
    for _ in 0..items {
        let item = body.uint(if version < 2 { 2 } else { 4 })?;
        let method = if version > 0 { body.uint(2)? & 15 } else { 0 };
        let reference = body.uint(2)?;
        let base = body.uint(base_size)?;
        let count = body.uint(2)?;
        let mut extents = Vec::new();
        for _ in 0..count {
            body.uint(index_size)?;
            let offset = base.checked_add(body.uint(offset_size)?)?;
            let length = body.uint(length_size)?;
            extents.push((offset, length));
        }
        if item == u64::from(id) {
            // A length of 0 means "to the end of the file", which no XMP item needs.
            let in_file = method == 0 && reference == 0;
            return (in_file && extents.iter().all(|&(_, length)| length > 0)).then_some(extents);
        }
    }
    None
}

/// The body of the first box of type `kind` among the boxes that fill `data`.
fn find_box<'a>(mut data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    while let Some((found, body, rest)) = next_box(data) {
        if &found == kind {
            return Some(body);
        }
        data = rest;
    }
    None
}

/// The first box of `data`: its type, its body and what follows it.
fn next_box(data: &[u8]) -> Option<([u8; 4], &[u8], &[u8])> {
    let mut header = Bytes(data);
    let size = header.uint(4)?;
    let kind = header.take(4)?.try_into().ok()?;
    let (size, header_len) = match size {
        // To the end of the data.
        0 => (data.len() as u64, 8),
        1 => (header.uint(8)?, 16),
        size => (size, 8),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|&size| size >= header_len)?;
    let (boxed, rest) = (data.get(..size)?, data.get(size..)?);
    Some((kind, &boxed[header_len..], rest))
}

/// Big-endian fields read off the front of a box.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    /// An unsigned field of `size` bytes (0 to 8; 0 reads as 0).
    fn uint(&mut self, size: usize) -> Option<u64> {
        if size > 8 {
            return None;
        }
        let bytes = self.take(size)?;
        Some(
            bytes
                .iter()
                .fold(0, |value, &byte| value << 8 | u64::from(byte)),
        )
    }

    /// A NUL-terminated string, without its NUL.
    fn c_string(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&byte| byte == 0)?;
        let text = self.take(end)?;
        self.take(1)?;
        Some(text)
    }
}

/// What decoding needs from the HEIF container.
struct Container {
    context: mp4parse::AvifContext,
    /// The primary item's size as its AV1 sequence header declares it, before `transform`.
    stored: (u32, u32),
    transform: Transform,
}

impl Container {
    fn read(input: &[u8]) -> Result<Container, String> {
        // Normal: what Firefox uses; it fails on what the specification says "shall" not be.
        let context = mp4parse::read_avif(&mut &input[..], mp4parse::ParseStrictness::Normal)
            .map_err(parse_error)?;
        let primary = context
            .primary_item_coded_data()
            .ok_or("no primary image (an image sequence only?)")?;
        // The AV1 sequence header bounds every frame the decoder will produce; the container's
        // `ispe` is only what the writer says.
        let meta = avif_parse::AV1Metadata::parse_av1_bitstream(primary)
            .map_err(|err| format!("the AV1 sequence header does not read: {err}"))?;
        let transform = Transform::of(&context).map_err(parse_error)?;
        Ok(Container {
            stored: (meta.max_frame_width.get(), meta.max_frame_height.get()),
            transform,
            context,
        })
    }

    fn primary(&self) -> &[u8] {
        // `read` checked that it is there.
        self.context.primary_item_coded_data().unwrap_or_default()
    }

    fn alpha(&self) -> Option<&[u8]> {
        self.context.alpha_item_coded_data()
    }

    /// A profile that the container holds but that does not read is left out, as for every
    /// other format: the pixels are still the best guess.
    fn icc(&self) -> Option<Vec<u8>> {
        match self.context.icc_colour_information()? {
            Ok(icc) => Some(icc.to_vec()),
            Err(err) => {
                tracing::warn!(error = %err, "avif icc profile ignored");
                None
            }
        }
    }

    fn upright_size(&self) -> (u32, u32) {
        let (width, height) = self.stored;
        if self.transform.clockwise_turns % 2 == 1 {
            (height, width)
        } else {
            (width, height)
        }
    }
}

fn parse_error(err: mp4parse::Error) -> String {
    match err {
        mp4parse::Error::InvalidData(status) => <&str>::from(status).to_owned(),
        mp4parse::Error::Unsupported(what) => format!("unsupported: {what}"),
        mp4parse::Error::UnexpectedEOF => "the file ends early".to_owned(),
        other => other.to_string(),
    }
}

/// The container's display transforms: HEIF's `irot` and `imir`, applied in that order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Transform {
    /// `irot` turns anticlockwise; stored as the clockwise turns our `rotate` makes (0..=3).
    clockwise_turns: u32,
    /// `imir`: `Some(true)` exchanges top and bottom, `Some(false)` left and right.
    mirror_vertically: Option<bool>,
}

impl Transform {
    fn of(context: &mp4parse::AvifContext) -> mp4parse::Result<Transform> {
        use mp4parse::{ImageMirror, ImageRotation};
        let clockwise_turns = match context.image_rotation()? {
            ImageRotation::D0 => 0,
            ImageRotation::D90 => 3,
            ImageRotation::D180 => 2,
            ImageRotation::D270 => 1,
        };
        let mirror = context.image_mirror_ptr()?;
        // SAFETY: mp4parse returns null or a pointer into `context`'s own properties, which
        // outlive this borrow; the value is read here and not kept.
        let mirror_vertically =
            unsafe { mirror.as_ref() }.map(|mirror| matches!(mirror, ImageMirror::TopBottom));
        Ok(Transform {
            clockwise_turns,
            mirror_vertically,
        })
    }

    fn apply(self, image: Bitmap) -> Result<Bitmap, DecodeError> {
        let image = if self.clockwise_turns == 0 {
            image
        } else {
            Rotate::new(f64::from(self.clockwise_turns * 90), TRANSPARENT)
                .and_then(|rotate| rotate.apply(image))
                .map_err(corrupt)?
        };
        Ok(match self.mirror_vertically {
            Some(true) => Flip.apply(image),
            Some(false) => Flop.apply(image),
            None => image,
        })
    }
}

/// Encodes as AVIF at `encoding`'s quality and effort; alpha is kept, `exif` (when not
/// empty) stored as the image's Exif item, `icc` (when given) as its colour profile, and
/// `xmp` (when not empty) as its XMP item.
pub(crate) fn encode(
    image: &Bitmap,
    encoding: &Encoding,
    exif: &[u8],
    icc: Option<&[u8]>,
    xmp: &[u8],
) -> Result<Vec<u8>, String> {
    use ravif::{BitDepth, Img, RGB8, RGBA8};
    let speed = 10 - encoding.effort.min(MAX_EFFORT);
    let mut encoder = ravif::Encoder::new()
        .with_quality(f32::from(encoding.quality.clamp(1, 100)))
        .with_alpha_quality(f32::from(encoding.quality.clamp(1, 100)))
        .with_speed(speed)
        // 8-bit, as libvips writes an 8-bit input: 10-bit took twice the time for 1 % less.
        .with_bit_depth(BitDepth::Eight)
        // The calling thread only: a filter encodes one image per core.
        .with_num_threads(Some(1));
    if !exif.is_empty() {
        encoder = encoder.with_exif(exif);
    }
    let (width, height) = (image.width() as usize, image.height() as usize);
    let encoded = if image.has_alpha() {
        let pixels: Vec<RGBA8> = image
            .data()
            .chunks_exact(4)
            .map(|p| RGBA8::new(p[0], p[1], p[2], p[3]))
            .collect();
        encoder.encode_rgba(Img::new(&pixels[..], width, height))
    } else {
        let pixels: Vec<RGB8> = image
            .data()
            .chunks_exact(3)
            .map(|p| RGB8::new(p[0], p[1], p[2]))
            .collect();
        encoder.encode_rgb(Img::new(&pixels[..], width, height))
    };
    let avif = encoded
        .map(|encoded| encoded.avif_file)
        .map_err(|err| err.to_string())?;
    if icc.is_none() && xmp.is_empty() {
        return Ok(avif);
    }
    with_metadata(&avif, icc, xmp).ok_or_else(|| "could not add the ICC profile or XMP".into())
}

/// `avif` (as ravif writes it: `ftyp`, `meta`, then `mdat`, version-0 `iloc` and `iinf`)
/// with `icc` (when given) added as a `colr` property of type `prof` on its primary item,
/// beside the `nclx` one ravif writes, and `xmp` (when not empty) as a `mime` item of type
/// `application/rdf+xml` describing it (`cdsc`), its data at the end of `mdat`: both as
/// libheif writes them, neither an option of ravif's. Every `iloc` offset past `meta` moves
/// by the bytes `meta` gains. `None` when the file is not laid out so.
fn with_metadata(avif: &[u8], icc: Option<&[u8]>, xmp: &[u8]) -> Option<Vec<u8>> {
    let (ftyp_kind, _, rest) = next_box(avif)?;
    let ftyp = &avif[..avif.len() - rest.len()];
    let (meta_kind, meta, after_meta) = next_box(rest)?;
    let (mdat_kind, mdat, after_mdat) = next_box(after_meta)?;
    if &ftyp_kind != b"ftyp" || &meta_kind != b"meta" || &mdat_kind != b"mdat" {
        return None;
    }
    // Appending to mdat needs it last, and with an 8-byte header.
    if !after_mdat.is_empty() || after_meta.len() != mdat.len() + 8 {
        return None;
    }
    let meta_end = avif.len() - after_meta.len();
    let (version_flags, mut children) = meta.split_at_checked(4)?;
    let primary = {
        let mut pitm = Bytes(find_box(children, b"pitm")?);
        let version = pitm.uint(1)?;
        pitm.take(3)?;
        pitm.uint(if version == 0 { 2 } else { 4 })?
    };
    let colr = icc.map(|icc| {
        let mut colr = Vec::with_capacity(12 + icc.len());
        push_box(&mut colr, b"colr", &[b"prof".as_slice(), icc].concat());
        colr
    });
    let mut body = version_flags.to_vec();
    // Where the iloc box starts in the new meta's body, and where in it the XMP's offset goes.
    let mut iloc_at = None;
    let mut xmp_offset_at = None;
    let mut xmp_item = None;
    let mut has_iref = false;
    while let Some((kind, child, rest)) = next_box(children) {
        children = rest;
        match &kind {
            b"iloc" if !xmp.is_empty() => {
                let (iloc, item, offset_at) = iloc_with(child, xmp.len())?;
                iloc_at = Some(body.len());
                xmp_offset_at = Some(offset_at);
                xmp_item = Some(item);
                push_box(&mut body, b"iloc", &iloc);
            }
            b"iloc" => {
                iloc_at = Some(body.len());
                push_box(&mut body, b"iloc", child);
            }
            b"iprp" => match &colr {
                Some(colr) => push_box(&mut body, b"iprp", &iprp_with(child, colr, primary)?),
                None => push_box(&mut body, b"iprp", child),
            },
            _ => push_box(&mut body, &kind, child),
        }
        has_iref |= &kind == b"iref";
    }
    if let Some(item) = xmp_item {
        // iinf and iref, now that the item's ID is known (iloc may follow them).
        body = meta_with_xmp_item(&body, item, primary, has_iref)?;
        // The boxes before iloc may have grown.
        let (grown, _) = find_box_at(&body[4..], b"iloc")?;
        iloc_at = Some(4 + grown);
    }
    let mut out =
        Vec::with_capacity(avif.len() + colr.as_ref().map_or(0, Vec::len) + xmp.len() + 256);
    out.extend_from_slice(ftyp);
    push_box(&mut out, b"meta", &body);
    let moved = (out.len() - ftyp.len()).checked_sub(meta.len() + 8)?;
    let iloc_body = ftyp.len() + 8 + iloc_at? + 8;
    move_offsets(&mut out[iloc_body..], meta_end as u64, moved as u64)?;
    let mdat_size = u32::try_from(mdat.len() + xmp.len() + 8).ok()?;
    out.extend_from_slice(&mdat_size.to_be_bytes());
    out.extend_from_slice(b"mdat");
    out.extend_from_slice(mdat);
    if let Some(offset_at) = xmp_offset_at {
        let offset = u32::try_from(out.len()).ok()?;
        out.get_mut(iloc_body + offset_at..iloc_body + offset_at + 4)?
            .copy_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(xmp);
    }
    Some(out)
}

/// An `iloc` body (version 0, 4-byte offsets and lengths, as ravif writes) with one more
/// item of `length` bytes in one extent, its offset 0 for now: the body, the new item's ID
/// (one past the largest), and where its offset is in the body.
fn iloc_with(iloc: &[u8], length: usize) -> Option<(Vec<u8>, u16, usize)> {
    let mut fields = Bytes(iloc);
    let header = fields.take(6)?;
    if header[0] != 0 || header[4] != 0x44 || header[5] >> 4 != 0 {
        return None;
    }
    let items = fields.uint(2)?;
    let mut largest = 0;
    for _ in 0..items {
        largest = largest.max(fields.uint(2)?);
        fields.uint(2)?;
        let extents = fields.uint(2)?;
        fields.take(usize::try_from(extents).ok()? * 8)?;
    }
    let item = u16::try_from(largest + 1).ok()?;
    let mut out = header.to_vec();
    out.extend_from_slice(&u16::try_from(items + 1).ok()?.to_be_bytes());
    out.extend_from_slice(&iloc[8..iloc.len() - fields.0.len()]);
    out.extend_from_slice(&item.to_be_bytes());
    // Data reference 0 (this file), one extent.
    out.extend_from_slice(&[0, 0, 0, 1]);
    let offset_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&u32::try_from(length).ok()?.to_be_bytes());
    out.extend_from_slice(fields.0);
    Some((out, item, offset_at))
}

/// A `meta` body (its version and flags first) with the XMP item `item` entered in `iinf`
/// (version 0) and described as being about `primary` in `iref` (version 0; a new one when
/// the file has none).
fn meta_with_xmp_item(meta: &[u8], item: u16, primary: u64, has_iref: bool) -> Option<Vec<u8>> {
    let mut infe = vec![2, 0, 0, 0];
    infe.extend_from_slice(&item.to_be_bytes());
    infe.extend_from_slice(&[0, 0]);
    infe.extend_from_slice(b"mime\0application/rdf+xml\0");
    let mut cdsc = Vec::new();
    let reference = [
        item.to_be_bytes(),
        1u16.to_be_bytes(),
        u16::try_from(primary).ok()?.to_be_bytes(),
    ]
    .concat();
    push_box(&mut cdsc, b"cdsc", &reference);

    let (version_flags, mut children) = meta.split_at_checked(4)?;
    let mut out = version_flags.to_vec();
    while let Some((kind, child, rest)) = next_box(children) {
        children = rest;
        match &kind {
            b"iinf" => {
                let (&[0, _, _, _], _) = child.split_at_checked(4)? else {
                    return None;
                };
                let count = Bytes(child.get(4..6)?).uint(2)? + 1;
                let mut iinf = child[..4].to_vec();
                iinf.extend_from_slice(&u16::try_from(count).ok()?.to_be_bytes());
                iinf.extend_from_slice(&child[6..]);
                push_box(&mut iinf, b"infe", &infe);
                push_box(&mut out, b"iinf", &iinf);
            }
            b"iref" => {
                if child.first() != Some(&0) {
                    return None;
                }
                push_box(&mut out, b"iref", &[child, &cdsc].concat());
            }
            _ => push_box(&mut out, &kind, child),
        }
    }
    if !has_iref {
        push_box(&mut out, b"iref", &[&[0, 0, 0, 0][..], &cdsc].concat());
    }
    Some(out)
}

/// Where the first box of type `kind` starts in `data`, and its body.
fn find_box_at<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<(usize, &'a [u8])> {
    let mut rest = data;
    while let Some((found, body, after)) = next_box(rest) {
        if &found == kind {
            return Some((data.len() - rest.len(), body));
        }
        rest = after;
    }
    None
}

/// The body of an `iprp` box with `colr` appended to its `ipco` and associated with item
/// `primary` in its `ipma` (version 0 or 1, flags 0: one-byte associations).
fn iprp_with(iprp: &[u8], colr: &[u8], primary: u64) -> Option<Vec<u8>> {
    let mut ipco = find_box(iprp, b"ipco")?.to_vec();
    let mut properties = 0;
    let mut rest = ipco.as_slice();
    while let Some((_, _, after)) = next_box(rest) {
        properties += 1;
        rest = after;
    }
    let index = u8::try_from(properties + 1)
        .ok()
        .filter(|&index| index < 0x80)?;
    ipco.extend_from_slice(colr);

    let mut ipma = Bytes(find_box(iprp, b"ipma")?);
    let version = ipma.uint(1)?;
    let flags = ipma.take(3)?;
    if version > 1 || flags != [0, 0, 0] {
        return None;
    }
    let entries = ipma.uint(4)?;
    let mut new_ipma = [&[version as u8][..], flags, &(entries as u32).to_be_bytes()].concat();
    let mut associated = false;
    for _ in 0..entries {
        let item_size = if version == 0 { 2 } else { 4 };
        let item = ipma.uint(item_size)?;
        let count = ipma.uint(1)?;
        let associations = ipma.take(count as usize)?;
        new_ipma.extend_from_slice(&item.to_be_bytes()[8 - item_size..]);
        if item == primary {
            new_ipma.push(u8::try_from(count + 1).ok()?);
            new_ipma.extend_from_slice(associations);
            new_ipma.push(index);
            associated = true;
        } else {
            new_ipma.push(count as u8);
            new_ipma.extend_from_slice(associations);
        }
    }
    if !associated {
        return None;
    }
    let mut out = Vec::with_capacity(iprp.len() + colr.len() + 1);
    push_box(&mut out, b"ipco", &ipco);
    push_box(&mut out, b"ipma", &new_ipma);
    Some(out)
}

/// Adds `moved` to every offset in an `iloc` box's `body` that points at or past `from`
/// (the data after `meta`). Version 0 only, with 4- or 8-byte offsets, as ravif writes it.
fn move_offsets(body: &mut [u8], from: u64, moved: u64) -> Option<()> {
    let (&[version, _, _, _, sizes, base_sizes, ..], _) = body.split_at_checked(6)? else {
        return None;
    };
    let (offset_size, length_size, base_size) = (
        usize::from(sizes >> 4),
        usize::from(sizes & 15),
        usize::from(base_sizes >> 4),
    );
    if version != 0 || ![0, 4, 8].contains(&base_size) || ![4, 8].contains(&offset_size) {
        return None;
    }
    let mut at = 6;
    let read = |body: &[u8], at: usize, size: usize| -> Option<u64> {
        Bytes(body.get(at..at + size)?).uint(size)
    };
    let write = |body: &mut [u8], at: usize, size: usize, value: u64| -> Option<()> {
        let bytes = value.to_be_bytes();
        if size < 8 && value >> (size * 8) != 0 {
            return None;
        }
        body.get_mut(at..at + size)?
            .copy_from_slice(&bytes[8 - size..]);
        Some(())
    };
    let items = read(body, at, 2)?;
    at += 2;
    for _ in 0..items {
        // item ID, data reference index
        at += 4;
        if base_size > 0 {
            let base = read(body, at, base_size)?;
            if base >= from {
                write(body, at, base_size, base + moved)?;
            }
            at += base_size;
        }
        let extents = read(body, at, 2)?;
        at += 2;
        for _ in 0..extents {
            let offset = read(body, at, offset_size)?;
            if base_size == 0 && offset >= from {
                write(body, at, offset_size, offset + moved)?;
            }
            at += offset_size + length_size;
        }
    }
    Some(())
}

/// Appends a box of type `kind` holding `body` to `out`.
fn push_box(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    let size = u32::try_from(body.len() + 8).unwrap_or(u32::MAX);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
}

fn corrupt(reason: String) -> DecodeError {
    DecodeError::Corrupt {
        format: FileFormat::Avif,
        reason,
    }
}

fn unsupported(reason: &str) -> DecodeError {
    DecodeError::Unsupported {
        format: FileFormat::Avif,
        reason: reason.into(),
    }
}

/// One rav1d context, single-threaded, for the items of one file.
struct Decoder {
    context: Option<Dav1dContext>,
}

impl Decoder {
    fn new(max_pixels: u64) -> Result<Decoder, DecodeError> {
        let mut settings = MaybeUninit::<Dav1dSettings>::uninit();
        // SAFETY: dav1d_default_settings writes a whole Dav1dSettings to the pointer.
        let settings = unsafe {
            dav1d_default_settings(NonNull::from(&mut settings).cast());
            settings.assume_init_mut()
        };
        settings.n_threads = 1;
        // A still image: one frame in, one out, nothing to pipeline.
        settings.max_frame_delay = 1;
        // Film grain is part of the picture, as libavif and libvips show it.
        settings.apply_grain = 1;
        // Only the highest spatial layer, the whole image.
        settings.all_layers = 0;
        // A frame bigger than the header said is refused by the decoder itself.
        settings.frame_size_limit = u32::try_from(max_pixels).unwrap_or(u32::MAX);
        // No printing to stderr: errors come back as results.
        // SAFETY: without a callback there is nothing to call.
        settings.logger = unsafe { Dav1dLogger::new(None, None) };
        let mut context = None;
        // SAFETY: both pointers are valid for the call; on success `context` holds a context
        // that Drop closes.
        let result = unsafe {
            dav1d_open(
                Some(NonNull::from(&mut context)),
                Some(NonNull::from(settings)),
            )
        };
        check(result, "the decoder would not start")?;
        Ok(Decoder { context })
    }

    /// Decodes one AV1 item (one temporal unit) to its last picture.
    fn decode(&mut self, item: &[u8]) -> Result<Picture, DecodeError> {
        let context = self.context.ok_or_else(|| corrupt("no decoder".into()))?;
        let mut data = Dav1dData::default();
        // SAFETY: dav1d_data_create allocates `item.len()` bytes that `data` owns; they are
        // filled before the decoder reads them, and `data` is unreferenced below whatever
        // happens.
        let buffer = unsafe { dav1d_data_create(Some(NonNull::from(&mut data)), item.len()) };
        if buffer.is_null() {
            return Err(corrupt("the AV1 item is empty or too large".into()));
        }
        // SAFETY: `buffer` holds `item.len()` writable bytes, apart from `item`.
        unsafe { std::ptr::copy_nonoverlapping(item.as_ptr(), buffer, item.len()) };
        let mut last: Option<Picture> = None;
        let sent = loop {
            // SAFETY: a live context and a valid data reference.
            let result = unsafe { dav1d_send_data(Some(context), Some(NonNull::from(&mut data))) };
            if result.0 == 0 {
                break Ok(());
            }
            // The decoder holds a picture it wants taken before more data (a layered item).
            match self.picture(context) {
                Some(picture) => last = Some(picture),
                None => break check(result, "the AV1 data does not decode"),
            }
        };
        // SAFETY: `data` was created above; unref is a no-op once the decoder took it all.
        unsafe { dav1d_data_unref(Some(NonNull::from(&mut data))) };
        sent?;
        while let Some(picture) = self.picture(context) {
            last = Some(picture);
        }
        last.ok_or_else(|| corrupt("the AV1 item holds no picture".into()))
    }

    fn picture(&self, context: Dav1dContext) -> Option<Picture> {
        let mut picture = Dav1dPicture::default();
        // SAFETY: a live context and an empty picture to fill.
        let result = unsafe { dav1d_get_picture(Some(context), Some(NonNull::from(&mut picture))) };
        if result.0 == 0 {
            Some(Picture(picture))
        } else {
            // SAFETY: unref of an empty picture is allowed and does nothing.
            unsafe { dav1d_picture_unref(Some(NonNull::from(&mut picture))) };
            None
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the context came from dav1d_open (or is None, which close ignores).
        unsafe { dav1d_close(Some(NonNull::from(&mut self.context))) };
    }
}

fn check(result: Dav1dResult, what: &str) -> Result<(), DecodeError> {
    if result.0 == 0 {
        Ok(())
    } else {
        Err(corrupt(format!(
            "{what} (error {})",
            result.0.unsigned_abs()
        )))
    }
}

/// A decoded picture, released on drop.
struct Picture(Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: a picture that dav1d_get_picture filled, released once.
        unsafe { dav1d_picture_unref(Some(NonNull::from(&mut self.0))) };
    }
}

/// Chroma subsampling, horizontal and vertical, as shifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Mono,
    Yuv420,
    Yuv422,
    Yuv444,
}

impl Picture {
    fn size(&self) -> (usize, usize) {
        (
            usize::try_from(self.0.p.w).unwrap_or(0),
            usize::try_from(self.0.p.h).unwrap_or(0),
        )
    }

    fn depth(&self) -> u32 {
        u32::try_from(self.0.p.bpc).unwrap_or(0)
    }

    fn layout(&self) -> Result<Layout, DecodeError> {
        Ok(match self.0.p.layout {
            DAV1D_PIXEL_LAYOUT_I400 => Layout::Mono,
            DAV1D_PIXEL_LAYOUT_I420 => Layout::Yuv420,
            DAV1D_PIXEL_LAYOUT_I422 => Layout::Yuv422,
            DAV1D_PIXEL_LAYOUT_I444 => Layout::Yuv444,
            _ => return Err(unsupported("an unknown pixel layout")),
        })
    }

    fn layout_name(&self) -> String {
        let layout = match self.layout() {
            Ok(Layout::Mono) => "yuv400",
            Ok(Layout::Yuv420) => "yuv420",
            Ok(Layout::Yuv422) => "yuv422",
            _ => "yuv444",
        };
        format!("{layout}p{}", self.depth())
    }

    /// Full (0..=255) or limited (16..=235) range, from the sequence header.
    fn range(&self) -> YuvRange {
        // SAFETY: the sequence header lives as long as the picture that refers to it.
        let full = self
            .0
            .seq_hdr
            .is_some_and(|header| unsafe { header.as_ref() }.color_range != 0);
        if full {
            YuvRange::Full
        } else {
            YuvRange::Limited
        }
    }

    /// The matrix the YUV planes were made with; `None` for identity (planes are G, B, R).
    fn matrix(&self) -> Result<Option<YuvStandardMatrix>, DecodeError> {
        // SAFETY: as in `range`.
        let mc = self
            .0
            .seq_hdr
            .map_or(DAV1D_MC_UNKNOWN, |header| unsafe { header.as_ref() }.mtrx);
        Ok(Some(match mc {
            DAV1D_MC_IDENTITY => return Ok(None),
            DAV1D_MC_BT709 => YuvStandardMatrix::Bt709,
            // BT.470 B/G is BT.601's matrix (ITU-T H.273, table 4); unknown is taken as 601,
            // as libavif does.
            DAV1D_MC_BT470BG | DAV1D_MC_BT601 | DAV1D_MC_UNKNOWN => YuvStandardMatrix::Bt601,
            DAV1D_MC_FCC => YuvStandardMatrix::Fcc,
            DAV1D_MC_SMPTE240 => YuvStandardMatrix::Smpte240,
            DAV1D_MC_BT2020_NCL | DAV1D_MC_BT2020_CL => YuvStandardMatrix::Bt2020,
            _ => {
                return Err(unsupported(
                    "a colour matrix other than BT.601, 709 or 2020",
                ));
            }
        }))
    }

    /// Plane `index` (0 = Y, 1 = U, 2 = V) as 8-bit samples, with its width and stride in
    /// samples: borrowed at 8 bits, rounded down from 10 or 12 into `scratch` otherwise.
    fn plane<'a>(
        &'a self,
        index: usize,
        scratch: &'a mut Vec<u8>,
    ) -> Result<(&'a [u8], usize, usize, usize), DecodeError> {
        let (width, height) = self.size();
        let (shift_x, shift_y) = match (index, self.layout()?) {
            (0, _) | (_, Layout::Yuv444) => (0, 0),
            (_, Layout::Yuv420) => (1, 1),
            (_, Layout::Yuv422) => (1, 0),
            (_, Layout::Mono) => return Err(corrupt("a grey picture has no chroma".into())),
        };
        let (width, height) = ((width + shift_x) >> shift_x, (height + shift_y) >> shift_y);
        let bytes = if self.depth() > 8 { 2 } else { 1 };
        let stride = usize::try_from(self.0.stride[usize::from(index > 0)]).unwrap_or(0);
        let data = self.0.data[index]
            .filter(|_| width > 0 && height > 0 && stride >= width * bytes)
            .ok_or_else(|| corrupt("the decoder returned no pixels".into()))?;
        // SAFETY: rav1d allocates `stride` bytes for each of the plane's `height` rows, and
        // the picture (so the plane) lives as long as `self`.
        let raw = unsafe {
            std::slice::from_raw_parts(
                data.as_ptr().cast::<u8>(),
                stride * (height - 1) + width * bytes,
            )
        };
        if bytes == 1 {
            return Ok((raw, width, height, stride));
        }
        // Samples are native-endian u16s; rounded to 8 bits, packed without padding.
        let shift = self.depth() - 8;
        let max = 255u32;
        scratch.clear();
        scratch.reserve_exact(width * height);
        for row in 0..height {
            let line = &raw[row * stride..row * stride + width * 2];
            scratch.extend(line.chunks_exact(2).map(|sample| {
                let value = u32::from(u16::from_ne_bytes([sample[0], sample[1]]));
                ((value + (1 << (shift - 1))) >> shift).min(max) as u8
            }));
        }
        Ok((scratch.as_slice(), width, height, width))
    }

    /// The picture as RGB, or RGBA with alpha opaque until `write_alpha` fills it.
    fn to_rgb(&self, alpha: bool) -> Result<Bitmap, DecodeError> {
        let (width, height) = self.size();
        let channels = if alpha { 4 } else { 3 };
        let mut out = vec![u8::MAX; width * height * channels];
        let range = self.range();
        let stride = (width * channels) as u32;
        let mut scratch = [Vec::new(), Vec::new(), Vec::new()];
        let [s0, s1, s2] = &mut scratch;
        let layout = self.layout()?;
        if layout == Layout::Mono {
            let (y, w, h, y_stride) = self.plane(0, s0)?;
            for row in 0..h {
                let line = &y[row * y_stride..row * y_stride + w];
                let pixels = &mut out[row * width * channels..][..w * channels];
                for (pixel, &luma) in pixels.chunks_exact_mut(channels).zip(line) {
                    let grey = expand_luma(luma, range);
                    pixel[..3].fill(grey);
                }
            }
        } else {
            let (y, w, h, y_stride) = self.plane(0, s0)?;
            let (u, _, _, u_stride) = self.plane(1, s1)?;
            let (v, _, _, v_stride) = self.plane(2, s2)?;
            let planar = YuvPlanarImage {
                y_plane: y,
                y_stride: y_stride as u32,
                u_plane: u,
                u_stride: u_stride as u32,
                v_plane: v,
                v_stride: v_stride as u32,
                width: w as u32,
                height: h as u32,
            };
            let result = match (self.matrix()?, layout, alpha) {
                (None, Layout::Yuv444, false) => yuv::gbr_to_rgb(&planar, &mut out, stride, range),
                (None, Layout::Yuv444, true) => yuv::gbr_to_rgba(&planar, &mut out, stride, range),
                (None, _, _) => {
                    return Err(unsupported("the identity matrix with subsampled chroma"));
                }
                (Some(m), Layout::Yuv420, false) => {
                    yuv::yuv420_to_rgb(&planar, &mut out, stride, range, m)
                }
                (Some(m), Layout::Yuv420, true) => {
                    yuv::yuv420_to_rgba(&planar, &mut out, stride, range, m)
                }
                (Some(m), Layout::Yuv422, false) => {
                    yuv::yuv422_to_rgb(&planar, &mut out, stride, range, m)
                }
                (Some(m), Layout::Yuv422, true) => {
                    yuv::yuv422_to_rgba(&planar, &mut out, stride, range, m)
                }
                (Some(m), _, false) => yuv::yuv444_to_rgb(&planar, &mut out, stride, range, m),
                (Some(m), _, true) => yuv::yuv444_to_rgba(&planar, &mut out, stride, range, m),
            };
            result.map_err(|err| corrupt(format!("YUV to RGB: {err}")))?;
        }
        Bitmap::new(width as u32, height as u32, alpha, out)
            .ok_or_else(|| corrupt("the picture's size does not match its pixels".into()))
    }

    /// Fills `image`'s alpha from this picture's luma (the alpha item), un-premultiplying the
    /// colour when the file says it was premultiplied.
    fn write_alpha(&self, image: &mut Bitmap, premultiplied: bool) -> Result<(), DecodeError> {
        let (width, height) = self.size();
        if (width, height) != (image.width() as usize, image.height() as usize) {
            return Err(corrupt(format!(
                "the alpha item is {width}x{height}, the image {}x{}",
                image.width(),
                image.height()
            )));
        }
        let range = self.range();
        let mut scratch = Vec::new();
        let (alpha, w, h, stride) = self.plane(0, &mut scratch)?;
        let data = image.data_mut();
        for row in 0..h {
            let line = &alpha[row * stride..row * stride + w];
            let pixels = &mut data[row * width * 4..][..w * 4];
            for (pixel, &a) in pixels.chunks_exact_mut(4).zip(line) {
                let a = expand_luma(a, range);
                pixel[3] = a;
                if premultiplied && a != 0 && a != u8::MAX {
                    for c in &mut pixel[..3] {
                        *c = ((u16::from(*c) * 255 + u16::from(a) / 2) / u16::from(a)).min(255)
                            as u8;
                    }
                }
            }
        }
        Ok(())
    }
}

/// An 8-bit luma sample on the full 0..=255 scale: limited range spans 16..=235.
fn expand_luma(value: u8, range: YuvRange) -> u8 {
    match range {
        YuvRange::Full => value,
        YuvRange::Limited => {
            let v = u32::from(value.clamp(16, 235) - 16);
            ((v * 255 + 109) / 219) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{mean_abs_diff, smooth};
    use crate::codec::{self, DecodeOptions, Decoded};
    use crate::colour::Applied;

    /// AVIFs that libvips 8.18 (libheif, libaom) made from the corpus's kite photo, each beside
    /// libvips' own decode of it as PNG; tests/data/SOURCES.md says how.
    fn fixture(name: &str) -> (Vec<u8>, Bitmap) {
        let avif = codec::tests::test_data(&format!("{name}.avif"));
        let png = codec::tests::test_data(&format!("{name}.png"));
        (avif, codec::decode(&png, &Limits::default()).unwrap().image)
    }

    fn decode(input: &[u8]) -> Result<Decoded, DecodeError> {
        codec::decode(input, &Limits::default())
    }

    fn with_alpha(image: &Bitmap) -> Bitmap {
        let (width, height) = (image.width(), image.height());
        let data = image
            .data()
            .chunks_exact(3)
            .enumerate()
            .flat_map(|(i, p)| [p[0], p[1], p[2], (i as u32 % width * 255 / width) as u8])
            .collect();
        Bitmap::new(width, height, true, data).unwrap()
    }

    #[test]
    fn libvips_avifs_decode_as_libvips_decodes_them() {
        for (name, colour_type, alpha) in [
            ("kite-rgba-320x200", "yuv420p8", true),
            ("kite-320x200-444", "yuv444p8", false),
            ("kite-320x200-10bit", "yuv420p10", false),
        ] {
            let (avif, expected) = fixture(name);
            assert_eq!(codec::detect_format(&avif), Some(FileFormat::Avif));
            let probe = codec::probe(&avif).unwrap();
            assert_eq!((probe.width, probe.height, probe.alpha), (320, 200, alpha));
            let decoded = decode(&avif).unwrap();
            assert_eq!(decoded.format, FileFormat::Avif);
            assert_eq!(decoded.colour_type, colour_type, "{name}");
            assert_eq!(decoded.image.has_alpha(), alpha, "{name}");
            let diff = mean_abs_diff(&decoded.image, &expected);
            assert!(diff < 1.0, "{name}: mean difference {diff} from libvips");
        }
    }

    #[test]
    fn encoded_avifs_decode_close_to_the_original_with_their_alpha() {
        let image = smooth(96, 64);
        for image in [image.clone(), with_alpha(&image)] {
            let encoding = Encoding {
                quality: 90,
                ..Encoding::new(FileFormat::Avif)
            };
            let avif = codec::encode_with(&image, &encoding).unwrap();
            assert_eq!(codec::detect_format(&avif), Some(FileFormat::Avif));
            let decoded = decode(&avif).unwrap();
            assert_eq!(decoded.image.has_alpha(), image.has_alpha());
            let diff = mean_abs_diff(&decoded.image, &image);
            assert!(diff < 2.0, "mean difference {diff}");
        }
    }

    #[test]
    fn quality_and_effort_change_the_file() {
        let image = smooth(64, 48);
        let size = |quality, effort| {
            let encoding = Encoding {
                quality,
                effort,
                ..Encoding::new(FileFormat::Avif)
            };
            codec::encode_with(&image, &encoding).unwrap().len()
        };
        assert!(size(30, 4) < size(95, 4));
        assert!(size(60, 9) <= size(60, 0));
    }

    #[test]
    fn broken_avifs_fail_with_a_reason_naming_avif() {
        let (avif, _) = fixture("kite-320x200-444");
        for (bytes, what) in [
            (&avif[..avif.len() / 2], "truncated"),
            (&avif[..40], "header only"),
        ] {
            let err = decode(bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::Corrupt {
                        format: FileFormat::Avif,
                        ..
                    }
                ),
                "{what}: {err:?}"
            );
            assert!(
                err.to_string().starts_with("avif image is corrupt"),
                "{err}"
            );
        }
        // The container is whole but its AV1 data is scrambled: an entropy decoder reads
        // garbage as some picture or refuses it; either way the image's size holds and
        // nothing panics.
        let mut scrambled = avif.clone();
        let len = scrambled.len();
        for byte in &mut scrambled[len - 2000..] {
            *byte = byte.wrapping_mul(31).wrapping_add(7);
        }
        if let Ok(decoded) = decode(&scrambled) {
            assert_eq!(decoded.image.width(), 320);
        }
    }

    /// libvips wrote each file from the same 80x50 pixels with an EXIF orientation, which
    /// libheif stores as `irot`/`imir`; decoding must show what that orientation shows.
    #[test]
    fn irot_and_imir_turn_the_image_as_the_exif_orientation_they_were_written_from() {
        use image::DynamicImage;
        use image::metadata::Orientation;
        let stored = decode(&codec::tests::test_data("kite-80x50-orient1.avif"))
            .unwrap()
            .image;
        for orientation in [2, 5, 6, 7] {
            let avif = codec::tests::test_data(&format!("kite-80x50-orient{orientation}.avif"));
            let mut expected = DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(80, 50, stored.data().to_vec()).unwrap(),
            );
            expected.apply_orientation(Orientation::from_exif(orientation).unwrap());
            let upright = (expected.width(), expected.height());
            let decoded = decode(&avif).unwrap().image;
            assert_eq!(
                (decoded.width(), decoded.height()),
                upright,
                "{orientation}"
            );
            assert!(
                decoded.data() == expected.as_bytes(),
                "orientation {orientation}: pixels differ"
            );
            let probe = codec::probe(&avif).unwrap();
            assert_eq!((probe.width, probe.height), upright, "{orientation}");
        }
        // And as libvips itself shows the one with both boxes.
        let (avif, expected) = fixture("kite-80x50-orient7");
        let diff = mean_abs_diff(&decode(&avif).unwrap().image, &expected);
        assert!(diff < 1.0, "mean difference {diff} from libvips");
    }

    /// An Adobe RGB AVIF: converted to sRGB as libvips converts it, or, asked to keep the
    /// profile, left as stored with the profile handed on.
    #[test]
    fn the_containers_icc_profile_is_applied_or_kept() {
        let (avif, expected) = fixture("kite-80x50-adobergb");
        let converted = decode(&avif).unwrap();
        assert!(
            matches!(&converted.colour_profile, Some(Applied::Converted(name)) if name.contains("Adobe")),
            "{:?}",
            converted.colour_profile
        );
        assert_eq!(converted.icc, None);
        let diff = mean_abs_diff(&converted.image, &expected);
        assert!(diff < 1.0, "mean difference {diff} from libvips");

        let options = DecodeOptions {
            keep_icc: true,
            ..DecodeOptions::default()
        };
        let kept = codec::decode_with(&avif, &Limits::default(), &options).unwrap();
        assert!(
            matches!(kept.colour_profile, Some(Applied::Embedded(_))),
            "{:?}",
            kept.colour_profile
        );
        let profile = std::fs::read("/usr/share/color/icc/compatibleWithAdobeRGB1998.icc");
        if let Ok(profile) = profile {
            assert_eq!(kept.icc.as_deref(), Some(&profile[..]));
        }
        // Unconverted, the pixels are measurably not libvips' sRGB ones.
        let unconverted = mean_abs_diff(&kept.image, &expected);
        assert!(unconverted > diff + 1.0, "{unconverted} against {diff}");
    }

    /// `keep_icc` into AVIF: the profile rides in a `colr` property beside ravif's `nclx`, and
    /// the pixels stay in it.
    #[test]
    fn an_avif_output_embeds_the_profile_it_keeps() {
        let (avif, _) = fixture("kite-80x50-adobergb");
        let process = |text: &str| {
            let pipeline = crate::ops::Pipeline::from_text(text).unwrap();
            crate::engine::process(&avif, &pipeline, &Limits::default())
                .unwrap()
                .bytes
        };
        let keep = DecodeOptions {
            keep_icc: true,
            ..DecodeOptions::default()
        };
        let stored = codec::decode_with(&avif, &Limits::default(), &keep).unwrap();
        let srgb = decode(&avif).unwrap().image;

        let kept = process("format:avif,q=95,keep_icc=true");
        let back = codec::decode_with(&kept, &Limits::default(), &keep).unwrap();
        assert!(back.icc.is_some());
        assert_eq!(back.icc, stored.icc);
        assert!(
            matches!(back.colour_profile, Some(Applied::Embedded(_))),
            "{:?}",
            back.colour_profile
        );
        let diff = mean_abs_diff(&back.image, &stored.image);
        assert!(diff < 2.0, "unconverted: {diff}");
        // Read for sRGB, it converts as the input did.
        let diff = mean_abs_diff(&decode(&kept).unwrap().image, &srgb);
        assert!(diff < 2.0, "converted on read: {diff}");

        // By default the pixels are converted and no profile is written.
        let plain = decode(&process("format:avif,q=95")).unwrap();
        assert_eq!(plain.colour_profile, None);
        let diff = mean_abs_diff(&plain.image, &srgb);
        assert!(diff < 2.0, "converted: {diff}");

        // With alpha and EXIF too: three items in iloc, two in ipma.
        let rgba = codec::decode(
            &codec::tests::test_data("kite-rgba-320x200.png"),
            &Limits::default(),
        )
        .unwrap()
        .image;
        let icc = stored.icc.unwrap();
        let exif = crate::metadata::tests::exif(1);
        let out = encode(
            &rgba,
            &Encoding::new(FileFormat::Avif),
            &exif,
            Some(&icc),
            &[],
        )
        .unwrap();
        let back = codec::decode_with(&out, &Limits::default(), &keep).unwrap();
        assert_eq!(back.icc.as_deref(), Some(&icc[..]));
        assert!(back.image.has_alpha());
        assert!(!back.exif.is_empty());
        assert!(back.xmp.is_empty());
        // And XMP: a fourth item, and an iref made for it.
        let xmp = crate::metadata::tests::XMP;
        let with_xmp = with_metadata(&out, None, xmp).unwrap();
        let again = codec::decode_with(&with_xmp, &Limits::default(), &keep).unwrap();
        assert_eq!(again.xmp, xmp);
        assert_eq!(again.icc.as_deref(), Some(&icc[..]));
        assert_eq!(again.exif, back.exif);
        assert_eq!(again.image.data(), back.image.data());
        // Without alpha or EXIF, ravif writes no iref: one is made.
        let plain = encode(
            &smooth(32, 24),
            &Encoding::new(FileFormat::Avif),
            &[],
            None,
            xmp,
        )
        .unwrap();
        assert_eq!(decode(&plain).unwrap().xmp, xmp);
        let diff = mean_abs_diff(&back.image, &rgba);
        assert!(diff < 3.0, "with alpha: {diff}");
        // A file not laid out as ravif writes it is refused, not mangled.
        assert_eq!(with_metadata(&out[..100], Some(&icc), &[]), None);
        assert_eq!(with_metadata(b"not an avif", Some(&icc), &[]), None);
    }

    /// The ASCII value of `tag` in the EXIF block, if it has one.
    fn exif_text(exif: &[u8], tag: exif::Tag) -> Option<String> {
        let parsed = exif::Reader::new().read_raw(exif.to_vec()).ok()?;
        let field = parsed.get_field(tag, exif::In::PRIMARY)?;
        Some(field.display_value().to_string())
    }

    #[test]
    fn the_xmp_item_is_read_whole_or_not_at_all_and_carried_on_request() {
        // libvips (libheif) wrote the XMP as a `mime` item beside its Exif item.
        let avif = codec::tests::test_data("kite-80x50-xmp.avif");
        let packet = decode(&avif).unwrap().xmp;
        assert!(packet.starts_with(b"<?xpacket begin="), "{packet:?}");
        assert!(packet.ends_with(b"<?xpacket end=\"w\"?>"));
        let has_creator = |xmp: &[u8]| xmp.windows(14).any(|w| w == b"pixelmesh test");
        assert!(has_creator(&packet));
        assert!(
            decode(&codec::tests::test_data("kite-80x50-exif.avif"))
                .unwrap()
                .xmp
                .is_empty()
        );

        // Cut anywhere, the container reads the whole packet or none of it, never a part.
        for len in 0..avif.len() {
            let read = xmp(&avif[..len]);
            assert!(
                read.is_none() || read.as_deref() == Some(&packet[..]),
                "cut at {len}"
            );
        }
        // Bytes flipped anywhere: no panic, and whatever reads is bounded.
        for at in 0..avif.len().min(600) {
            let mut broken = avif.clone();
            broken[at] ^= 0xa5;
            assert!(xmp(&broken).is_none_or(|read| read.len() <= MAX_XMP_BYTES));
        }

        let pipeline = |text: &str| crate::ops::Pipeline::from_text(text).unwrap();
        let kept = crate::engine::process(
            &avif,
            &pipeline("format:png,strip=false"),
            &Limits::default(),
        )
        .unwrap();
        assert!(has_creator(
            &codec::decode(&kept.bytes, &Limits::default()).unwrap().xmp
        ));
        let stripped =
            crate::engine::process(&avif, &pipeline("format:png"), &Limits::default()).unwrap();
        assert!(
            codec::decode(&stripped.bytes, &Limits::default())
                .unwrap()
                .xmp
                .is_empty()
        );
        // Into an AVIF: a mime item of its own, which reads back whole.
        let kept = crate::engine::process(
            &avif,
            &pipeline("format:avif,strip=false"),
            &Limits::default(),
        )
        .unwrap();
        let back = decode(&kept.bytes).unwrap();
        assert!(has_creator(&back.xmp));
        assert!(!back.exif.is_empty(), "the Exif item is still there");
    }

    #[test]
    fn the_exif_item_is_read_and_carried_on_request() {
        // libvips wrote the Exif item (libheif's); the orientation-1 file has none.
        let avif = codec::tests::test_data("kite-80x50-exif.avif");
        let decoded = decode(&avif).unwrap();
        assert_eq!(
            exif_text(&decoded.exif, exif::Tag::Artist).as_deref(),
            Some("\"Ada Lovelace\"")
        );
        assert_eq!(
            exif_text(&decoded.exif, exif::Tag::DateTime).as_deref(),
            Some("2022-05-23 19:21:22")
        );
        let plain = codec::tests::test_data("kite-80x50-orient1.avif");
        assert!(decode(&plain).unwrap().exif.is_empty());

        let output = |text: &str| {
            let pipeline = crate::ops::Pipeline::from_text(text).unwrap();
            let out = crate::engine::process(&avif, &pipeline, &Limits::default()).unwrap();
            codec::decode(&out.bytes, &Limits::default()).unwrap().exif
        };
        let all = output("format:jpeg,strip=false");
        assert_eq!(
            exif_text(&all, exif::Tag::DateTime).as_deref(),
            Some("2022-05-23 19:21:22")
        );
        let copyright = output("format:jpeg,metadata=copyright");
        assert_eq!(
            exif_text(&copyright, exif::Tag::Copyright).as_deref(),
            Some("\"CC BY 4.0\"")
        );
        assert_eq!(exif_text(&copyright, exif::Tag::DateTime), None);
        assert!(output("format:jpeg").is_empty());
    }

    /// A tile that fails to decode once aborted the whole process: rav1d 1.1 unwrapped the
    /// frame header its own error path had just cleared, inside an `extern "C"` function,
    /// where a panic cannot unwind (tests/props.rs found it). This file is that case.
    #[test]
    fn an_av1_tile_that_fails_to_decode_fails_the_image_not_the_process() {
        let avif = codec::tests::test_data("corrupt-tile.avif");
        let err = decode(&avif).unwrap_err();
        assert!(
            err.to_string().starts_with("avif image is corrupt"),
            "{err}"
        );
    }

    #[test]
    fn over_the_pixel_limit_is_refused_from_the_header() {
        let (avif, _) = fixture("kite-320x200-444");
        let limits = Limits {
            max_pixels: 320 * 200 - 1,
            ..Limits::default()
        };
        assert!(matches!(
            codec::decode(&avif, &limits),
            Err(DecodeError::TooManyPixels {
                width: 320,
                height: 200,
                ..
            })
        ));
    }
}
