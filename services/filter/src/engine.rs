//! `process`: bytes in, pipeline applied, bytes out.
//!
//! Pure and synchronous: no I/O, no threads (a worker runs one image per core), and the same
//! input and pipeline always give the same bytes, so a redelivered task rewrites an identical
//! output.

use pixelmesh_proto::ErrorCode;

use crate::codec::{self, DecodeError, Decoded, EncodeError, Limits};
use crate::ops::Pipeline;

/// An encoded output image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Why an image could not be processed. Every case is about the input or what the pipeline
/// asks of it, so retrying the same task never helps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(
        "op {position} ({op}) would make a {width}x{height} image ({:.1} megapixels), over the limit of {:.1} megapixels",
        *width as f64 * *height as f64 / 1e6,
        *limit as f64 / 1e6
    )]
    OutputTooLarge {
        position: usize,
        op: &'static str,
        width: u64,
        height: u64,
        limit: u64,
    },
    /// A pixel library refused the buffers an op gave it.
    #[error("op {position} ({op}) failed: {reason}")]
    Op {
        position: usize,
        op: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl ProcessError {
    /// A lowercase sentence naming the problem, for results and logs.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Size problems are `ResourceExhausted`, the rest `InvalidArgument`; neither is transient.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProcessError::Decode(
                DecodeError::InputTooLarge { .. }
                | DecodeError::TooManyPixels { .. }
                | DecodeError::OverMemoryLimit { .. },
            )
            | ProcessError::OutputTooLarge { .. } => ErrorCode::ResourceExhausted,
            ProcessError::Decode(_) | ProcessError::Op { .. } | ProcessError::Encode(_) => {
                ErrorCode::InvalidArgument
            }
        }
    }
}

impl From<ProcessError> for pixelmesh_proto::Error {
    fn from(err: ProcessError) -> Self {
        pixelmesh_proto::Error::new(err.code(), err.message())
    }
}

/// Decodes `input`, applies `pipeline`, and encodes as the pipeline's format op says, or in
/// the input's own format when it has none.
pub fn process(
    input: &[u8],
    pipeline: &Pipeline,
    limits: &Limits,
) -> Result<Processed, ProcessError> {
    let Decoded {
        mut image,
        format: input_format,
    } = codec::decode(input, limits)?;
    for (i, op) in pipeline.ops().iter().enumerate() {
        let position = i + 1;
        // Checked before the op allocates: a small image resized by width alone can ask for
        // an enormous height.
        let (width, height) = op.output_size(image.width(), image.height());
        if width.saturating_mul(height) > limits.max_pixels {
            return Err(ProcessError::OutputTooLarge {
                position,
                op: op.name(),
                width,
                height,
                limit: limits.max_pixels,
            });
        }
        image = op.apply(image).map_err(|reason| ProcessError::Op {
            position,
            op: op.name(),
            reason,
        })?;
    }
    let encoding = match pipeline.output_format() {
        Some(output) => output.encoding(),
        None => codec::Encoding::new(input_format),
    };
    let format = encoding.format;
    let bytes = codec::encode_with(&image, &encoding)?;
    Ok(Processed {
        bytes,
        content_type: format.content_type(),
        width: image.width(),
        height: image.height(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Bitmap, FileFormat};

    fn photo_like(width: u32, height: u32) -> Vec<u8> {
        let data = (0..width * height)
            .flat_map(|i| {
                let (x, y) = (i % width, i / width);
                [
                    (x * 255 / width) as u8,
                    (y * 255 / height) as u8,
                    ((x * y) % 251) as u8,
                ]
            })
            .collect();
        let image = Bitmap::new(width, height, false, data).unwrap();
        codec::encode(&image, FileFormat::Jpeg, 90).unwrap()
    }

    fn pipeline(json: &str) -> Pipeline {
        Pipeline::from_json(json).unwrap()
    }

    #[test]
    fn full_pipeline_and_determinism() {
        let input = photo_like(401, 233);
        let p = pipeline(
            r#"[{"op":"resize","width":200},{"op":"blur","sigma":2},
                {"op":"brightness","factor":1.1},{"op":"format","format":"jpeg","quality":85}]"#,
        );
        let first = process(&input, &p, &Limits::default()).unwrap();
        assert_eq!((first.width, first.height), (200, 116));
        assert_eq!(first.content_type, "image/jpeg");
        assert_eq!(codec::detect_format(&first.bytes), Some(FileFormat::Jpeg));
        for _ in 0..3 {
            assert_eq!(process(&input, &p, &Limits::default()).unwrap(), first);
        }
    }

    #[test]
    fn every_op_and_output_format_is_deterministic() {
        let input = photo_like(64, 48);
        for format in FileFormat::ALL {
            let p = pipeline(&format!(
                r#"[{{"op":"resize","width":30,"height":30,"fit":"cover"}},{{"op":"grayscale"}},
                    {{"op":"blur","sigma":0.7}},{{"op":"brightness","factor":0.9}},
                    {{"op":"format","format":"{}"}}]"#,
                format.name()
            ));
            let a = process(&input, &p, &Limits::default()).unwrap();
            let b = process(&input, &p, &Limits::default()).unwrap();
            assert_eq!(a, b, "{format:?}");
            assert_eq!((a.width, a.height), (30, 30));
            assert_eq!(a.content_type, format.content_type());
        }
    }

    #[test]
    fn without_a_format_op_the_input_format_is_kept() {
        let image = Bitmap::new(8, 8, true, vec![90; 8 * 8 * 4]).unwrap();
        let png = codec::encode(&image, FileFormat::Png, 85).unwrap();
        let out = process(&png, &Pipeline::default(), &Limits::default()).unwrap();
        assert_eq!(out.content_type, "image/png");
        assert_eq!((out.width, out.height), (8, 8));
        let out = process(
            &photo_like(10, 10),
            &pipeline(r#"[{"op":"grayscale"}]"#),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(out.content_type, "image/jpeg");
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let p = pipeline(r#"[{"op":"blur","sigma":1}]"#);
        let jpeg = photo_like(50, 40);
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"GIF89a".to_vec(),
            b"\x89PNG\r\n\x1a\n".to_vec(),
            b"RIFF\0\0\0\0WEBPVP8 ".to_vec(),
            b"BM".to_vec(),
            b"II*\0".to_vec(),
            b"MM\0*".to_vec(),
            vec![0xff, 0xd8, 0xff],
        ];
        inputs.extend((1..jpeg.len()).step_by(37).map(|cut| jpeg[..cut].to_vec()));
        // Deterministic pseudo-random garbage after a JPEG signature.
        let mut state = 0x2545_f491_u32;
        let mut noise = vec![0xff, 0xd8, 0xff, 0xe0];
        noise.extend((0..4000).map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        }));
        inputs.push(noise);
        for input in &inputs {
            if let Err(err) = process(input, &p, &Limits::default()) {
                let msg = err.message();
                assert!(
                    !msg.is_empty() && msg.starts_with(char::is_lowercase),
                    "{msg}"
                );
                assert_ne!(err.code(), ErrorCode::Internal);
            }
        }
        let err = process(b"garbage", &p, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert_eq!(
            err.message(),
            "not a supported image (jpeg, png, webp, gif, bmp, tiff)"
        );
    }

    #[test]
    fn resize_results_over_the_pixel_limit_are_refused_before_allocating() {
        // 4x1 asked for height 16384 makes 65536x16384: about a gigapixel.
        let input = codec::encode(
            &Bitmap::new(4, 1, false, vec![1; 12]).unwrap(),
            FileFormat::Png,
            85,
        )
        .unwrap();
        let err = process(
            &input,
            &pipeline(r#"[{"op":"grayscale"},{"op":"resize","height":16384,"upscale":true}]"#),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);
        assert_eq!(
            err.message(),
            "op 2 (resize) would make a 65536x16384 image (1073.7 megapixels), over the limit of 100.0 megapixels"
        );
        let proto: pixelmesh_proto::Error = err.into();
        assert_eq!(proto.code, ErrorCode::ResourceExhausted);
    }
}
