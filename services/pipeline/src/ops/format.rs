//! `format`: the output encoding and its quality. It changes no pixels; the engine reads it
//! when encoding, which is why it must be the last op.

use pixelmesh_proto::v1;

use crate::bitmap::Bitmap;
pub use crate::formats::{
    DEFAULT_COMPRESSION, DEFAULT_EFFORT, DEFAULT_QUALITY, Encoding, FileFormat, MAX_EFFORT,
    MAX_FRAMES, Metadata,
};

use serde_json::Value;

use super::json::{Fields, quoted};
use super::{Assets, Context, Field, Operator, Spec};
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "format";

/// Output format and its options. Options that do not apply to the format are refused, so
/// nobody waits for a `progressive` PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    encoding: Encoding,
    /// Of an animated input, the one frame to use; `None` keeps them all.
    frame: Option<u32>,
}

impl Format {
    /// The format with default options (lossy for WebP).
    pub fn new(format: FileFormat, quality: u8) -> Result<Format, String> {
        Format::with_options(Encoding {
            quality,
            lossless: false,
            ..Encoding::new(format)
        })
    }

    /// `encoding`, checked: every option in range, and none set away from its default for a
    /// format it does not apply to.
    pub fn with_options(encoding: Encoding) -> Result<Format, String> {
        let Encoding {
            format,
            quality,
            progressive,
            compression,
            lossless,
            effort,
            metadata: _,
            keep_icc: _,
        } = encoding;
        if !(1..=100).contains(&quality) {
            return Err(quality_error(i64::from(quality)));
        }
        if !(1..=9).contains(&compression) {
            return Err(compression_error(i64::from(compression)));
        }
        if effort > MAX_EFFORT {
            return Err(effort_error(i64::from(effort)));
        }
        let only = |applies: bool, option: &str, to: &str| {
            if applies {
                Ok(())
            } else {
                Err(format!(
                    "{option} applies to {to} only, not {}",
                    format.name()
                ))
            }
        };
        only(
            !progressive || format == FileFormat::Jpeg,
            "progressive",
            "jpeg",
        )?;
        only(!lossless || format == FileFormat::Webp, "lossless", "webp")?;
        only(
            compression == DEFAULT_COMPRESSION || format == FileFormat::Png,
            "compression",
            "png",
        )?;
        only(
            effort == DEFAULT_EFFORT || format == FileFormat::Avif,
            "effort",
            "avif",
        )?;
        Ok(Format {
            encoding,
            frame: None,
        })
    }

    /// This format, taking only frame `frame` (0 = the first) of an animated input.
    pub fn with_frame(self, frame: Option<u32>) -> Result<Format, String> {
        match frame {
            Some(frame) if frame >= MAX_FRAMES => Err(frame_error(i64::from(frame))),
            _ => Ok(Format { frame, ..self }),
        }
    }

    /// The one frame of an animated input to use, if the op picks one.
    pub fn frame(&self) -> Option<u32> {
        self.frame
    }

    pub fn format(&self) -> FileFormat {
        self.encoding.format
    }

    pub fn quality(&self) -> u8 {
        self.encoding.quality
    }

    /// What the codec needs to write this format.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
}

fn frame_error(value: i64) -> String {
    format!(
        "frame must be between 0 and {}, got {value}",
        MAX_FRAMES - 1
    )
}

fn compression_error(value: i64) -> String {
    format!("compression must be between 1 and 9, got {value}")
}

fn quality_error(value: i64) -> String {
    format!("quality must be between 1 and 100, got {value}")
}

fn effort_error(value: i64) -> String {
    format!("effort must be between 0 and {MAX_EFFORT}, got {value}")
}

impl Operator for Format {
    const SPEC: Spec = Spec::new(
        NAME,
        "Format",
        "Encode as; must be the last op.",
        &[
            Field::choice("format", "Format", FileFormat::NAMES)
                .with_default("webp")
                .required(),
            Field::int("quality", "Quality", 1, 100)
                .with_default("85")
                .only_when("format", &["jpeg", "webp", "avif"]),
            Field::flag("progressive", "Progressive").only_when("format", &["jpeg"]),
            Field::flag("lossless", "Lossless").only_when("format", &["webp"]),
            Field::int("compression", "Compression", 1, 9)
                .with_default("6")
                .only_when("format", &["png"]),
            Field::int("effort", "Effort", 0, MAX_EFFORT as i64)
                .with_default("4")
                .only_when("format", &["avif"]),
            Field::choice("metadata", "Keep metadata", &Metadata::NAMES),
            Field::flag("strip", "Strip metadata").with_default("true"),
            Field::flag("keep_icc", "Keep ICC profile"),
            Field::int("frame", "Frame", 0, MAX_FRAMES as i64 - 1),
        ],
    );

    type Proto = v1::Format;

    fn from_fields(fields: &Fields<'_>) -> Result<Format, String> {
        let name = fields.string("format")?.ok_or("format is required")?;
        let format = FileFormat::from_name(name).ok_or_else(|| {
            format!(
                "format must be one of {}, got {}",
                FileFormat::NAMES.join(", "),
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
        let effort = match fields.integer("effort")? {
            None => DEFAULT_EFFORT,
            Some(e) => u8::try_from(e).map_err(|_| effort_error(e))?,
        };
        // `strip=false` is libvips' and imgproxy's spelling of `metadata=all`.
        let metadata = match (fields.string("metadata")?, fields.boolean("strip")?) {
            (None, strip) => {
                if strip == Some(false) {
                    Metadata::All
                } else {
                    Metadata::None
                }
            }
            (Some(name), strip) => {
                let metadata = Metadata::from_name(name).ok_or_else(|| {
                    format!(
                        "metadata must be one of {}, got {}",
                        Metadata::NAMES.join(", "),
                        quoted(name)
                    )
                })?;
                // strip=true is the default, what `metadata` refines; strip=false says all.
                if strip == Some(false) && metadata != Metadata::All {
                    return Err(format!("strip=false contradicts metadata={name}"));
                }
                metadata
            }
        };
        let frame = match fields.integer("frame")? {
            None => None,
            Some(f) => Some(u32::try_from(f).map_err(|_| frame_error(f))?),
        };
        Format::with_options(Encoding {
            format,
            quality,
            progressive: fields.boolean("progressive")?.unwrap_or(false),
            lossless: fields.boolean("lossless")?.unwrap_or(false),
            compression,
            effort,
            metadata,
            keep_icc: fields.boolean("keep_icc")?.unwrap_or(false),
        })?
        .with_frame(frame)
    }

    fn from_proto(p: &v1::Format) -> Result<Format, String> {
        let format = match v1::ImageFormat::try_from(p.format) {
            Ok(v1::ImageFormat::Unspecified) => return Err("format is required".into()),
            _ => FileFormat::from_proto(p.format).ok_or_else(|| {
                format!(
                    "format must be one of {}, got {}",
                    FileFormat::NAMES.join(", "),
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
        let effort = match p.effort {
            None => DEFAULT_EFFORT,
            Some(e) => u8::try_from(e).map_err(|_| effort_error(i64::from(e)))?,
        };
        let metadata = Metadata::from_proto(p.metadata)
            .ok_or_else(|| format!("metadata {} is not a known KeepMetadata value", p.metadata))?;
        Format::with_options(Encoding {
            format,
            quality,
            progressive: p.progressive,
            lossless: p.lossless,
            compression,
            effort,
            metadata,
            keep_icc: p.keep_icc,
        })?
        .with_frame(p.frame)
    }

    fn to_proto(&self) -> v1::Format {
        let e = &self.encoding;
        v1::Format {
            format: e.format.to_proto() as i32,
            quality: u32::from(e.quality),
            progressive: e.progressive,
            lossless: e.lossless,
            compression: u32::from(e.compression),
            effort: (e.effort != DEFAULT_EFFORT).then_some(u32::from(e.effort)),
            metadata: if e.metadata == Metadata::None {
                v1::KeepMetadata::Unspecified as i32
            } else {
                e.metadata.to_proto() as i32
            },
            keep_icc: e.keep_icc,
            frame: self.frame,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let e = &self.encoding;
        let mut params = vec![("format", Value::from(e.format.name()))];
        if e.quality != DEFAULT_QUALITY {
            params.push(("quality", Value::from(e.quality)));
        }
        if e.progressive {
            params.push(("progressive", Value::from(true)));
        }
        if e.lossless {
            params.push(("lossless", Value::from(true)));
        }
        if e.compression != DEFAULT_COMPRESSION {
            params.push(("compression", Value::from(e.compression)));
        }
        if e.effort != DEFAULT_EFFORT {
            params.push(("effort", Value::from(e.effort)));
        }
        match e.metadata {
            Metadata::None => {}
            Metadata::Copyright => params.push(("metadata", Value::from("copyright"))),
            Metadata::All => params.push(("strip", Value::from(false))),
        }
        if e.keep_icc {
            params.push(("keep_icc", Value::from(true)));
        }
        if let Some(frame) = self.frame {
            params.push(("frame", Value::from(frame)));
        }
        params
    }

    fn cost(&self, input: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost::in_place(input, 0.0)
    }

    fn tile_halo(&self) -> Option<u32> {
        // A tiled image is encoded by the assembly, which has tiles of pixels and none of
        // the input's metadata: an output that keeps some is processed whole. So is one frame
        // of an animation: the split decodes the first.
        let e = &self.encoding;
        (e.metadata == Metadata::None && !e.keep_icc && self.frame.is_none()).then_some(0)
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        // The engine reads the format op when it encodes; pixels are unchanged.
        Ok(image)
    }
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
            "format must be one of jpeg, png, webp, gif, bmp, tiff, avif, got 17"
        );
    }

    #[test]
    fn metadata_is_stripped_unless_asked_and_strip_false_keeps_all() {
        use crate::ops::{Op, Pipeline};
        let encoding = |text: &str| match Pipeline::from_text(text).map(|p| p.ops()[0].clone()) {
            Ok(Op::Format(format)) => Ok(format.encoding()),
            Ok(other) => panic!("{other:?}"),
            Err(err) => Err(err.message),
        };
        let plain = encoding("format:jpeg").unwrap();
        assert_eq!((plain.metadata, plain.keep_icc), (Metadata::None, false));
        assert!(!plain.embeds_icc());
        let all = encoding("format:png,strip=false").unwrap();
        assert_eq!(all.metadata, Metadata::All);
        assert!(all.embeds_icc(), "strip=false keeps the profile too");
        assert_eq!(encoding("format:png,metadata=all").unwrap(), all);
        let copyright = encoding("format:webp,metadata=copyright").unwrap();
        assert_eq!(copyright.metadata, Metadata::Copyright);
        assert!(!copyright.embeds_icc());
        let icc = encoding("format:jpeg,keep_icc=true").unwrap();
        assert!(icc.keep_icc && icc.embeds_icc());
        // Formats without a place for a profile get sRGB pixels even when asked.
        assert!(!encoding("format:gif,keep_icc=true").unwrap().embeds_icc());
        assert!(!encoding("format:bmp,strip=false").unwrap().embeds_icc());
        assert!(encoding("format:avif,strip=false").unwrap().embeds_icc());
        assert_eq!(
            encoding("format:jpeg,strip=false,metadata=copyright").unwrap_err(),
            "op 1 (format): strip=false contradicts metadata=copyright"
        );
        assert_eq!(
            encoding("format:jpeg,metadata=gps").unwrap_err(),
            r#"op 1 (format): metadata must be one of none, copyright, all, got "gps""#
        );
        // The canonical text and the proto carry both options through.
        for text in [
            "format:png,strip=false",
            "format:jpeg,metadata=copyright,keep_icc=true",
        ] {
            let pipeline = Pipeline::from_text(text).unwrap();
            assert_eq!(Pipeline::from_text(&pipeline.to_text()).unwrap(), pipeline);
            let back = Pipeline::from_proto(&pipeline.to_proto()).unwrap();
            assert_eq!(back, pipeline);
        }
        // The assembly of a tiled image has no metadata to carry: such pipelines stay whole.
        for text in [
            "format:png,strip=false",
            "format:jpeg,metadata=copyright",
            "format:jpeg,keep_icc=true",
        ] {
            let pipeline = Pipeline::from_text(&format!("brightness:1.1/{text}")).unwrap();
            assert_eq!(pipeline.tile_halo(), None, "{text}");
        }
        let plain = Pipeline::from_text("brightness:1.1/format:png").unwrap();
        assert_eq!(plain.tile_halo(), Some(0));
        let unknown = v1::Format {
            format: v1::ImageFormat::Png as i32,
            metadata: 42,
            ..Default::default()
        };
        assert!(
            Format::from_proto(&unknown)
                .unwrap_err()
                .contains("metadata 42")
        );
    }
}
