//! `format`: the output encoding and its quality. It changes no pixels; the engine reads it
//! when encoding, which is why it must be the last op.

use pixelmesh_proto::v1;

use serde_json::Value;

use super::json::{Fields, quoted};

pub(crate) const NAME: &str = "format";
pub(crate) const FIELDS: &[&str] = &[
    "format",
    "quality",
    "progressive",
    "lossless",
    "compression",
];

/// Quality when none is given: a common web default, visually clean for photos.
pub const DEFAULT_QUALITY: u8 = 85;
/// PNG compression when none is given: zlib's own default level.
pub const DEFAULT_COMPRESSION: u8 = 6;

/// The image formats pixelmesh reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Tiff,
}

impl FileFormat {
    pub const ALL: [FileFormat; 6] = [
        FileFormat::Jpeg,
        FileFormat::Png,
        FileFormat::Webp,
        FileFormat::Gif,
        FileFormat::Bmp,
        FileFormat::Tiff,
    ];

    const NAMES: &str = "jpeg, png, webp, gif, bmp, tiff";

    /// The lowercase name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Jpeg => "jpeg",
            FileFormat::Png => "png",
            FileFormat::Webp => "webp",
            FileFormat::Gif => "gif",
            FileFormat::Bmp => "bmp",
            FileFormat::Tiff => "tiff",
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
        }
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
        }
    }
}

/// Output format and its options. Options that do not apply to the format are refused, so
/// nobody waits for a `progressive` PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    format: FileFormat,
    quality: u8,
    progressive: bool,
    lossless: bool,
    compression: u8,
}

impl Format {
    /// The format with default options.
    pub fn new(format: FileFormat, quality: u8) -> Result<Format, String> {
        Format::with_options(format, quality, false, false, DEFAULT_COMPRESSION)
    }

    pub fn with_options(
        format: FileFormat,
        quality: u8,
        progressive: bool,
        lossless: bool,
        compression: u8,
    ) -> Result<Format, String> {
        if !(1..=100).contains(&quality) {
            return Err(quality_error(i64::from(quality)));
        }
        if !(1..=9).contains(&compression) {
            return Err(compression_error(i64::from(compression)));
        }
        if progressive && format != FileFormat::Jpeg {
            return Err(format!(
                "progressive applies to jpeg only, not {}",
                format.name()
            ));
        }
        if lossless && format != FileFormat::Webp {
            return Err(format!(
                "lossless applies to webp only, not {}",
                format.name()
            ));
        }
        if compression != DEFAULT_COMPRESSION && format != FileFormat::Png {
            return Err(format!(
                "compression applies to png only, not {}",
                format.name()
            ));
        }
        Ok(Format {
            format,
            quality,
            progressive,
            lossless,
            compression,
        })
    }

    pub fn format(&self) -> FileFormat {
        self.format
    }

    pub fn quality(&self) -> u8 {
        self.quality
    }

    /// What the codec needs to write this format.
    pub fn encoding(&self) -> crate::codec::Encoding {
        crate::codec::Encoding {
            format: self.format,
            quality: self.quality,
            progressive: self.progressive,
            compression: self.compression,
            lossless: self.lossless,
        }
    }

    pub(crate) fn from_proto(p: &v1::Format) -> Result<Format, String> {
        let format = match v1::ImageFormat::try_from(p.format) {
            Ok(v1::ImageFormat::Unspecified) => return Err("format is required".into()),
            _ => FileFormat::from_proto(p.format).ok_or_else(|| {
                format!(
                    "format must be one of {}, got {}",
                    FileFormat::NAMES,
                    p.format
                )
            })?,
        };
        let quality = match p.quality {
            0 => DEFAULT_QUALITY,
            q => u8::try_from(q).map_err(|_| quality_error(i64::from(q)))?,
        };
        let compression = match p.compression {
            0 => DEFAULT_COMPRESSION,
            c => u8::try_from(c).map_err(|_| compression_error(i64::from(c)))?,
        };
        Format::with_options(format, quality, p.progressive, p.lossless, compression)
    }

    pub(crate) fn from_json(fields: &Fields<'_>) -> Result<Format, String> {
        let name = fields.string("format")?.ok_or("format is required")?;
        let format = FileFormat::from_name(name).ok_or_else(|| {
            format!(
                "format must be one of {}, got {}",
                FileFormat::NAMES,
                quoted(name)
            )
        })?;
        let quality = match fields.integer("quality")? {
            None | Some(0) => DEFAULT_QUALITY,
            Some(q) => u8::try_from(q).map_err(|_| quality_error(q))?,
        };
        let compression = match fields.integer("compression")? {
            None | Some(0) => DEFAULT_COMPRESSION,
            Some(c) => u8::try_from(c).map_err(|_| compression_error(c))?,
        };
        Format::with_options(
            format,
            quality,
            fields.boolean("progressive")?.unwrap_or(false),
            fields.boolean("lossless")?.unwrap_or(false),
            compression,
        )
    }

    pub(crate) fn to_proto(self) -> v1::Format {
        v1::Format {
            format: self.format.to_proto() as i32,
            quality: u32::from(self.quality),
            progressive: self.progressive,
            lossless: self.lossless,
            compression: u32::from(self.compression),
        }
    }

    pub(crate) fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = vec![("format", Value::from(self.format.name()))];
        if self.quality != DEFAULT_QUALITY {
            params.push(("quality", Value::from(self.quality)));
        }
        if self.progressive {
            params.push(("progressive", Value::from(true)));
        }
        if self.lossless {
            params.push(("lossless", Value::from(true)));
        }
        if self.compression != DEFAULT_COMPRESSION {
            params.push(("compression", Value::from(self.compression)));
        }
        params
    }
}

fn compression_error(value: i64) -> String {
    format!("compression must be between 1 and 9, got {value}")
}

fn quality_error(value: i64) -> String {
    format!("quality must be between 1 and 100, got {value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_proto_values_round_trip() {
        for format in FileFormat::ALL {
            assert_eq!(FileFormat::from_name(format.name()), Some(format));
            assert_eq!(
                FileFormat::from_proto(format.to_proto() as i32),
                Some(format)
            );
            assert!(format.content_type().starts_with("image/"));
        }
        assert_eq!(FileFormat::from_proto(0), None);
        assert_eq!(FileFormat::from_proto(99), None);
    }

    #[test]
    fn quality_defaults_and_limits() {
        let p = |quality| {
            Format::from_proto(&v1::Format {
                format: v1::ImageFormat::Jpeg as i32,
                quality,
                ..Default::default()
            })
        };
        assert_eq!(p(0).unwrap().quality(), DEFAULT_QUALITY);
        assert_eq!(p(1).unwrap().quality(), 1);
        assert_eq!(p(100).unwrap().quality(), 100);
        assert_eq!(
            p(101).unwrap_err(),
            "quality must be between 1 and 100, got 101"
        );
        assert_eq!(
            p(1000).unwrap_err(),
            "quality must be between 1 and 100, got 1000"
        );
        assert_eq!(
            Format::from_proto(&v1::Format {
                format: 17,
                quality: 0,
                ..Default::default()
            })
            .unwrap_err(),
            "format must be one of jpeg, png, webp, gif, bmp, tiff, got 17"
        );
    }
}
