//! `format`: the output encoding and its quality. It changes no pixels; the engine reads it
//! when encoding, which is why it must be the last op.

use pixelmesh_proto::v1;

use super::json::{Fields, quoted};

pub(crate) const NAME: &str = "format";
pub(crate) const FIELDS: &[&str] = &["format", "quality"];

/// Quality when none is given: a common web default, visually clean for photos.
pub const DEFAULT_QUALITY: u8 = 85;

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

/// Output format and quality (1..=100; only JPEG uses it for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    format: FileFormat,
    quality: u8,
}

impl Format {
    pub fn new(format: FileFormat, quality: u8) -> Result<Format, String> {
        if !(1..=100).contains(&quality) {
            return Err(quality_error(i64::from(quality)));
        }
        Ok(Format { format, quality })
    }

    pub fn format(&self) -> FileFormat {
        self.format
    }

    pub fn quality(&self) -> u8 {
        self.quality
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
        Format::new(format, quality)
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
        Format::new(format, quality)
    }

    pub(crate) fn to_proto(self) -> v1::Format {
        v1::Format {
            format: self.format.to_proto() as i32,
            quality: u32::from(self.quality),
        }
    }
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
                quality: 0
            })
            .unwrap_err(),
            "format must be one of jpeg, png, webp, gif, bmp, tiff, got 17"
        );
    }
}
