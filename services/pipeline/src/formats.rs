//! The image formats pixelmesh reads and writes, how an output is encoded, and how far a
//! JPEG may shrink on load: what the pipeline model, the budget and the codec agree on. The
//! codec (in the filter) implements them; nothing here touches encoded bytes.

use pixelmesh_proto::v1;

/// Quality when none is given: a common web default, visually clean for photos.
pub const DEFAULT_QUALITY: u8 = 85;
/// PNG compression when none is given: zlib's own default level.
pub const DEFAULT_COMPRESSION: u8 = 6;
/// AVIF effort when none is given: libvips' default, 0 (fastest) ..= 9 (smallest).
pub const DEFAULT_EFFORT: u8 = 4;
/// The largest AVIF effort.
pub const MAX_EFFORT: u8 = 9;
/// The most frames an animated input may have, whatever their size: each frame is decoded,
/// processed and encoded in turn, and all of them are alive until the encode (their pixels
/// count toward the pixel limit too). libvips' and imgproxy's defaults are in the same range.
pub const MAX_FRAMES: u32 = 1000;

/// The image formats pixelmesh reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Tiff,
    Avif,
}

impl FileFormat {
    pub const ALL: [FileFormat; 7] = [
        FileFormat::Jpeg,
        FileFormat::Png,
        FileFormat::Webp,
        FileFormat::Gif,
        FileFormat::Bmp,
        FileFormat::Tiff,
        FileFormat::Avif,
    ];

    pub const NAMES: &[&str] = &["jpeg", "png", "webp", "gif", "bmp", "tiff", "avif"];

    /// The lowercase name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Jpeg => "jpeg",
            FileFormat::Png => "png",
            FileFormat::Webp => "webp",
            FileFormat::Gif => "gif",
            FileFormat::Bmp => "bmp",
            FileFormat::Tiff => "tiff",
            FileFormat::Avif => "avif",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            FileFormat::Jpeg => "image/jpeg",
            FileFormat::Png => "image/png",
            FileFormat::Webp => "image/webp",
            FileFormat::Gif => "image/gif",
            FileFormat::Bmp => "image/bmp",
            FileFormat::Tiff => "image/tiff",
            FileFormat::Avif => "image/avif",
        }
    }

    /// Whether our encoder for the format embeds an ICC profile. GIF and BMP cannot carry one
    /// the way browsers read it; AVIF could, but ravif's container writer has no ICC box.
    pub fn holds_icc(self) -> bool {
        matches!(
            self,
            FileFormat::Jpeg
                | FileFormat::Png
                | FileFormat::Webp
                | FileFormat::Tiff
                | FileFormat::Avif
        )
    }

    /// Whether the format holds an animation: GIF and WebP. The others take one frame.
    pub fn animates(self) -> bool {
        matches!(self, FileFormat::Gif | FileFormat::Webp)
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Jpeg => "jpg",
            FileFormat::Tiff => "tif",
            other => other.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<FileFormat> {
        FileFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn to_proto(self) -> v1::ImageFormat {
        match self {
            FileFormat::Jpeg => v1::ImageFormat::Jpeg,
            FileFormat::Png => v1::ImageFormat::Png,
            FileFormat::Webp => v1::ImageFormat::Webp,
            FileFormat::Gif => v1::ImageFormat::Gif,
            FileFormat::Bmp => v1::ImageFormat::Bmp,
            FileFormat::Tiff => v1::ImageFormat::Tiff,
            FileFormat::Avif => v1::ImageFormat::Avif,
        }
    }

    /// `None` for unspecified and unknown values.
    pub fn from_proto(value: i32) -> Option<FileFormat> {
        match v1::ImageFormat::try_from(value).ok()? {
            v1::ImageFormat::Unspecified => None,
            v1::ImageFormat::Jpeg => Some(FileFormat::Jpeg),
            v1::ImageFormat::Png => Some(FileFormat::Png),
            v1::ImageFormat::Webp => Some(FileFormat::Webp),
            v1::ImageFormat::Gif => Some(FileFormat::Gif),
            v1::ImageFormat::Bmp => Some(FileFormat::Bmp),
            v1::ImageFormat::Tiff => Some(FileFormat::Tiff),
            v1::ImageFormat::Avif => Some(FileFormat::Avif),
        }
    }
}

/// How to encode an output: the format and its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub format: FileFormat,
    /// JPEG, lossy WebP and AVIF quality, 1..=100.
    pub quality: u8,
    /// JPEG: progressive scans.
    pub progressive: bool,
    /// PNG: 1 (fastest) ..= 9 (smallest).
    pub compression: u8,
    /// WebP: lossless (image's encoder) when true, else lossy at `quality` (libwebp). The
    /// default is lossless, which was the only WebP output before lossy existed.
    pub lossless: bool,
    /// AVIF: 0 (fastest) ..= 9 (smallest), as libvips' `effort`.
    pub effort: u8,
    /// What of the input's metadata the output keeps.
    pub metadata: Metadata,
    /// Leave the pixels in the input's ICC profile and embed it, where the format can hold one.
    pub keep_icc: bool,
}

impl Encoding {
    /// The format with default options: quality 85, baseline JPEG, PNG compression 6, lossless
    /// WebP, AVIF effort 4.
    pub fn new(format: FileFormat) -> Encoding {
        Encoding {
            format,
            quality: DEFAULT_QUALITY,
            progressive: false,
            compression: DEFAULT_COMPRESSION,
            lossless: true,
            effort: DEFAULT_EFFORT,
            metadata: Metadata::None,
            keep_icc: false,
        }
    }

    /// Whether the input's ICC profile goes into the output as it is, its pixels unconverted:
    /// asked for, and the format can hold a profile. Otherwise the pixels are made sRGB, which
    /// an output without a profile is taken to be.
    pub fn embeds_icc(&self) -> bool {
        (self.keep_icc || self.metadata == Metadata::All) && self.format.holds_icc()
    }
}

/// What of the input's metadata an output keeps. Stripped by default, as imgproxy and
/// thumbor do: EXIF can carry a GPS position and a camera's serial number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metadata {
    #[default]
    None,
    /// The EXIF Artist and Copyright tags.
    Copyright,
    /// EXIF (its orientation reset, since the pixels are turned upright), XMP and the ICC
    /// profile, where the format can hold them.
    All,
}

impl Metadata {
    pub const NAMES: [&'static str; 3] = ["none", "copyright", "all"];

    pub fn name(self) -> &'static str {
        match self {
            Metadata::None => "none",
            Metadata::Copyright => "copyright",
            Metadata::All => "all",
        }
    }

    pub fn from_name(name: &str) -> Option<Metadata> {
        match name {
            "none" => Some(Metadata::None),
            "copyright" => Some(Metadata::Copyright),
            "all" => Some(Metadata::All),
            _ => None,
        }
    }

    pub fn to_proto(self) -> v1::KeepMetadata {
        match self {
            Metadata::None => v1::KeepMetadata::None,
            Metadata::Copyright => v1::KeepMetadata::Copyright,
            Metadata::All => v1::KeepMetadata::All,
        }
    }

    /// `None` for a value this build does not know.
    pub fn from_proto(value: i32) -> Option<Metadata> {
        match v1::KeepMetadata::try_from(value).ok()? {
            v1::KeepMetadata::Unspecified | v1::KeepMetadata::None => Some(Metadata::None),
            v1::KeepMetadata::Copyright => Some(Metadata::Copyright),
            v1::KeepMetadata::All => Some(Metadata::All),
        }
    }
}

/// How much bigger than needed a shrunk-on-load image stays, so that the op's own filter does
/// at least this much of the downscale. libvips' thumbnail leaves the same factor; with 1 the
/// block average would do all of it and fine textures alias visibly.
pub const SHRINK_HEADROOM: u32 = 2;

/// The three speeds of the PNG encoder, by compression level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PngSpeed {
    Fast,
    Default,
    Best,
}

impl Encoding {
    /// The deflate coder our PNG compression, 0 (fastest) ..= 9 (smallest), selects: `None`
    /// for fdeflate, else a libdeflate level. By measurement (BENCHMARKS.md, "PNG"; four
    /// 1920-wide photos and a 1920x1080 graphic, our adaptive row filter): fdeflate is 5x
    /// faster than anything else, and from 1 % (small photos) to 18 % (a 4K q95 photo)
    /// bigger than libdeflate. libdeflate's level 1 is its fastest and on photos smaller than
    /// its levels 2–4, which shrink graphics more (level 4 27 % under level 1); levels 6 and 8
    /// take 1.5–4x level 4's time for 2–4 % off photos, and 10 (near-optimal parsing) 8 % off
    /// photos and 44 % off the graphic at 3–15x. The default, 6, is level 4: on the reference
    /// photo 0.75x the time of zlib-rs level 3 (the coder before) for a 3 % bigger file, 0.74x
    /// libvips' size in 0.79x its time; over the four photos 0.97x zlib-rs' time for 0.4 %
    /// more, and the graphic 13 % smaller.
    pub fn png_deflate_level(&self) -> Option<u8> {
        match self.compression {
            0..=2 => None,
            3 => Some(1),
            4 => Some(2),
            5 => Some(3),
            6 => Some(4),
            7 => Some(6),
            8 => Some(8),
            _ => Some(10),
        }
    }

    /// Which of the PNG encoder's speeds `compression` selects, for the budget: fdeflate,
    /// libdeflate up to level 6, or its long searches (8, and near-optimal parsing at 10).
    pub fn png_speed(&self) -> PngSpeed {
        match self.png_deflate_level() {
            None => PngSpeed::Fast,
            Some(..=6) => PngSpeed::Default,
            Some(_) => PngSpeed::Best,
        }
    }
}

/// The largest of 8, 4, 2 and 1 that a `size` JPEG can be divided by and still be at least
/// `min_size` (0 = any) on both sides. libjpeg rounds scaled sides up.
pub fn jpeg_shrink(size: (u32, u32), min_size: (u32, u32)) -> u8 {
    [8u8, 4, 2]
        .into_iter()
        .find(|&d| {
            size.0.div_ceil(u32::from(d)) >= min_size.0
                && size.1.div_ceil(u32::from(d)) >= min_size.1
        })
        .unwrap_or(1)
}
