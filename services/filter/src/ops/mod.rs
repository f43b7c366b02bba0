//! Parse, then apply: a [`Pipeline`] is a validated list of [`Op`]s, read from protobuf or
//! JSON; each op lives in its own file with its parameters, validation and pixel code, and this
//! module only dispatches.
//!
//! Validation errors are `InvalidArgument` and name the op's 1-based position, the op and the
//! field: `op 2 (blur): sigma must be > 0 and <= 100, got -1`.

mod bitmap;
pub mod blur;
pub mod brightness;
pub mod format;
pub mod grayscale;
mod json;
pub mod resize;

pub use bitmap::Bitmap;
pub use blur::Blur;
pub use brightness::Brightness;
pub use format::{FileFormat, Format};
pub use grayscale::Grayscale;
pub use resize::{Fit, Resize};

use pixelmesh_proto::Error;
use pixelmesh_proto::v1::{Operation, operation};
use serde_json::Value;

use json::{Fields, brief, quoted};

/// More ops than this is a mistake or an attack, not a pipeline.
pub const MAX_OPS: usize = 64;

/// One validated operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Resize(Resize),
    Blur(Blur),
    Brightness(Brightness),
    Grayscale(Grayscale),
    Format(Format),
}

impl Op {
    /// The name used in JSON, the CLI and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Resize(_) => resize::NAME,
            Op::Blur(_) => blur::NAME,
            Op::Brightness(_) => brightness::NAME,
            Op::Grayscale(_) => grayscale::NAME,
            Op::Format(_) => format::NAME,
        }
    }

    /// The size of the image this op produces from a `width` x `height` one, computed without
    /// touching pixels so the engine can refuse oversized results before allocating them.
    /// `u64` because a resize with one side given can ask for more than `u32` holds.
    pub fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        match self {
            Op::Resize(op) => op.output_size(width, height),
            Op::Blur(_) | Op::Brightness(_) | Op::Grayscale(_) | Op::Format(_) => {
                (u64::from(width), u64::from(height))
            }
        }
    }

    /// Runs the op. Errors here mean a library refused buffers we built, which the engine
    /// reports as a failed op; valid ops on valid bitmaps do not fail.
    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        match self {
            Op::Resize(op) => op.apply(image),
            Op::Blur(op) => op.apply(image),
            Op::Brightness(op) => Ok(op.apply(image)),
            Op::Grayscale(op) => Ok(op.apply(image)),
            // The engine reads the format op when it encodes; pixels are unchanged.
            Op::Format(_) => Ok(image),
        }
    }

    fn from_proto(op: &operation::Op) -> Result<Op, (&'static str, String)> {
        let tagged = |name: &'static str| move |msg: String| (name, msg);
        match op {
            operation::Op::Resize(p) => Resize::from_proto(p)
                .map(Op::Resize)
                .map_err(tagged(resize::NAME)),
            operation::Op::Blur(p) => Blur::from_proto(p)
                .map(Op::Blur)
                .map_err(tagged(blur::NAME)),
            operation::Op::Brightness(p) => Brightness::from_proto(p)
                .map(Op::Brightness)
                .map_err(tagged(brightness::NAME)),
            operation::Op::Grayscale(p) => Ok(Op::Grayscale(Grayscale::from_proto(p))),
            operation::Op::Format(p) => Format::from_proto(p)
                .map(Op::Format)
                .map_err(tagged(format::NAME)),
        }
    }

    /// `name` is the JSON `"op"` value; `Ok(None)` means no op has that name.
    fn from_json(name: &str, map: &serde_json::Map<String, Value>) -> Result<Option<Op>, String> {
        Ok(Some(match name {
            resize::NAME => Op::Resize(Resize::from_json(&Fields::new(map, resize::FIELDS)?)?),
            blur::NAME => Op::Blur(Blur::from_json(&Fields::new(map, blur::FIELDS)?)?),
            brightness::NAME => Op::Brightness(Brightness::from_json(&Fields::new(
                map,
                brightness::FIELDS,
            )?)?),
            grayscale::NAME => {
                Fields::new(map, &[])?;
                Op::Grayscale(Grayscale)
            }
            format::NAME => Op::Format(Format::from_json(&Fields::new(map, format::FIELDS)?)?),
            _ => return Ok(None),
        }))
    }

    fn to_proto(&self) -> Operation {
        let op = match self {
            Op::Resize(op) => operation::Op::Resize(op.to_proto()),
            Op::Blur(op) => operation::Op::Blur(op.to_proto()),
            Op::Brightness(op) => operation::Op::Brightness(op.to_proto()),
            Op::Grayscale(op) => operation::Op::Grayscale(op.to_proto()),
            Op::Format(op) => operation::Op::Format(op.to_proto()),
        };
        Operation { op: Some(op) }
    }
}

/// A validated, ordered list of ops. Empty is valid: the image is only re-encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline {
    ops: Vec<Op>,
}

impl Pipeline {
    /// Validates the protobuf form.
    pub fn from_proto(ops: &[Operation]) -> Result<Pipeline, Error> {
        check_count(ops.len())?;
        let ops = ops
            .iter()
            .enumerate()
            .map(|(i, operation)| {
                let position = i + 1;
                let op = operation
                    .op
                    .as_ref()
                    .ok_or_else(|| Error::invalid(format!("op {position}: no op set")))?;
                Op::from_proto(op)
                    .map_err(|(name, msg)| Error::invalid(format!("op {position} ({name}): {msg}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Pipeline::new(ops)
    }

    /// Validates the REST form, a JSON array of objects each naming its op:
    /// `[{"op":"resize","width":1920},{"op":"format","format":"webp"}]`.
    /// Unknown ops and unknown fields are errors, so a typo never silently does nothing.
    pub fn from_json(json: &str) -> Result<Pipeline, Error> {
        let value: Value = serde_json::from_str(json)
            .map_err(|err| Error::invalid(format!("pipeline is not valid json: {err}")))?;
        let Value::Array(items) = value else {
            return Err(Error::invalid("pipeline must be a json array of ops"));
        };
        check_count(items.len())?;
        let ops = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let position = i + 1;
                let Value::Object(map) = item else {
                    return Err(Error::invalid(format!(
                        "op {position}: must be an object with an \"op\" field, got {}",
                        brief(item)
                    )));
                };
                let name = match map.get("op") {
                    Some(Value::String(name)) => name.as_str(),
                    Some(other) => {
                        return Err(Error::invalid(format!(
                            "op {position}: \"op\" must be a string, got {}",
                            brief(other)
                        )));
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "op {position}: missing \"op\" field"
                        )));
                    }
                };
                match Op::from_json(name, map) {
                    Ok(Some(op)) => Ok(op),
                    Ok(None) => Err(Error::invalid(format!(
                        "op {position}: unknown op {}",
                        quoted(name)
                    ))),
                    Err(msg) => Err(Error::invalid(format!("op {position} ({name}): {msg}"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Pipeline::new(ops)
    }

    /// The protobuf form; `from_proto(&p.to_proto())` gives back `p`.
    pub fn to_proto(&self) -> Vec<Operation> {
        self.ops.iter().map(Op::to_proto).collect()
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The output format the pipeline asks for, if any; it is always the last op.
    pub fn output_format(&self) -> Option<&Format> {
        match self.ops.last() {
            Some(Op::Format(format)) => Some(format),
            _ => None,
        }
    }

    /// Rules about the pipeline as a whole, after each op checked its own fields.
    fn new(ops: Vec<Op>) -> Result<Pipeline, Error> {
        let last = ops.len();
        if let Some(i) = ops
            .iter()
            .position(|op| matches!(op, Op::Format(_)))
            .filter(|&i| i + 1 != last)
        {
            // One format op, at the end: a format in the middle would have no effect.
            return Err(Error::invalid(format!(
                "op {} (format): format must be the last op",
                i + 1
            )));
        }
        Ok(Pipeline { ops })
    }
}

fn check_count(count: usize) -> Result<(), Error> {
    if count > MAX_OPS {
        return Err(Error::invalid(format!(
            "pipeline has {count} ops, over the limit of {MAX_OPS}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_proto::ErrorCode;
    use pixelmesh_proto::v1;

    fn json_err(json: &str) -> String {
        let err = Pipeline::from_json(json).expect_err(json);
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        err.message
    }

    fn proto_err(ops: Vec<operation::Op>) -> String {
        let ops: Vec<Operation> = ops
            .into_iter()
            .map(|op| Operation { op: Some(op) })
            .collect();
        let err = Pipeline::from_proto(&ops).expect_err("invalid pipeline");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        err.message
    }

    #[test]
    fn validation_messages_name_position_op_and_field() {
        let cases = [
            (
                r#"[{"op":"resize","width":10},{"op":"blur","sigma":-1}]"#,
                "op 2 (blur): sigma must be > 0 and <= 100, got -1",
            ),
            (r#"[{"op":"sharpenn"}]"#, r#"op 1: unknown op "sharpenn""#),
            (
                r#"[{"op":"resize","widht":100}]"#,
                r#"op 1 (resize): unknown field "widht""#,
            ),
            (
                r#"[{"op":"resize","width":0,"height":0}]"#,
                "op 1 (resize): width or height is required",
            ),
            (
                r#"[{"op":"resize","width":-5}]"#,
                "op 1 (resize): width must be between 1 and 16384, got -5",
            ),
            (
                r#"[{"op":"resize","height":16385}]"#,
                "op 1 (resize): height must be between 1 and 16384, got 16385",
            ),
            (
                r#"[{"op":"resize","width":10,"fit":"cover"}]"#,
                "op 1 (resize): fit cover needs both width and height",
            ),
            (
                r#"[{"op":"resize","width":10,"fit":"stretch"}]"#,
                r#"op 1 (resize): fit must be one of inside, cover, fill, got "stretch""#,
            ),
            (
                r#"[{"op":"format","format":"png"},{"op":"grayscale"}]"#,
                "op 1 (format): format must be the last op",
            ),
            (
                r#"[{"op":"format","format":"jpeg","quality":101}]"#,
                "op 1 (format): quality must be between 1 and 100, got 101",
            ),
            (
                r#"[{"op":"format","format":"avif"}]"#,
                r#"op 1 (format): format must be one of jpeg, png, webp, gif, bmp, tiff, got "avif""#,
            ),
            (r#"[{"op":"format"}]"#, "op 1 (format): format is required"),
            (
                r#"[{"op":"brightness","factor":10.5}]"#,
                "op 1 (brightness): factor must be >= 0 and <= 10, got 10.5",
            ),
            (
                r#"[{"op":"brightness"}]"#,
                "op 1 (brightness): factor is required",
            ),
            (r#"[{"op":"blur"}]"#, "op 1 (blur): sigma is required"),
            (
                r#"[{"op":"blur","sigma":"2"}]"#,
                r#"op 1 (blur): sigma must be a number, got "2""#,
            ),
            (
                r#"[{"op":"grayscale","amount":1}]"#,
                r#"op 1 (grayscale): unknown field "amount""#,
            ),
            (r#"[{"width":1}]"#, r#"op 1: missing "op" field"#),
            (
                r#"[7]"#,
                r#"op 1: must be an object with an "op" field, got 7"#,
            ),
            (r#"{"op":"blur"}"#, "pipeline must be a json array of ops"),
        ];
        for (json, want) in cases {
            assert_eq!(json_err(json), want, "{json}");
        }
        assert!(json_err("[").starts_with("pipeline is not valid json: "));
    }

    #[test]
    fn proto_validation_matches_json() {
        assert_eq!(
            proto_err(vec![operation::Op::Blur(v1::Blur { sigma: -1.0 })]),
            "op 1 (blur): sigma must be > 0 and <= 100, got -1"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Blur(v1::Blur { sigma: f32::NAN })]),
            "op 1 (blur): sigma must be > 0 and <= 100, got NaN"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Resize(v1::Resize::default())]),
            "op 1 (resize): width or height is required"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Resize(v1::Resize {
                width: 10,
                height: 0,
                fit: 42,
            })]),
            "op 1 (resize): fit must be one of inside, cover, fill, got 42"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Format(v1::Format {
                format: v1::ImageFormat::Jpeg as i32,
                quality: 101,
            })]),
            "op 1 (format): quality must be between 1 and 100, got 101"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Format(v1::Format::default())]),
            "op 1 (format): format is required"
        );
        assert_eq!(
            proto_err(vec![
                operation::Op::Format(v1::Format {
                    format: v1::ImageFormat::Png as i32,
                    quality: 0,
                }),
                operation::Op::Format(v1::Format {
                    format: v1::ImageFormat::Jpeg as i32,
                    quality: 0,
                }),
            ]),
            "op 1 (format): format must be the last op"
        );
        let err = Pipeline::from_proto(&[Operation::default()]).unwrap_err();
        assert_eq!(err.message, "op 1: no op set");
    }

    #[test]
    fn op_count_is_limited() {
        let ok = vec![
            Operation {
                op: Some(operation::Op::Grayscale(v1::Grayscale {}))
            };
            MAX_OPS
        ];
        assert_eq!(Pipeline::from_proto(&ok).unwrap().ops().len(), MAX_OPS);
        let too_many = format!("[{}]", vec![r#"{"op":"grayscale"}"#; MAX_OPS + 1].join(","));
        assert_eq!(
            json_err(&too_many),
            "pipeline has 65 ops, over the limit of 64"
        );
    }

    #[test]
    fn empty_pipeline_is_valid() {
        assert!(Pipeline::from_json("[]").unwrap().ops().is_empty());
        assert!(Pipeline::from_proto(&[]).unwrap().ops().is_empty());
    }

    #[test]
    fn json_and_proto_forms_parse_to_the_same_pipeline() {
        let json = Pipeline::from_json(
            r#"[{"op":"resize","width":1920},{"op":"blur","sigma":2},
                {"op":"brightness","factor":1.1},{"op":"grayscale"},
                {"op":"resize","width":300,"height":200,"fit":"cover"},
                {"op":"format","format":"webp"}]"#,
        )
        .unwrap();
        let ops = [
            operation::Op::Resize(v1::Resize {
                width: 1920,
                height: 0,
                fit: v1::Fit::Unspecified as i32,
            }),
            operation::Op::Blur(v1::Blur { sigma: 2.0 }),
            operation::Op::Brightness(v1::Brightness { factor: 1.1 }),
            operation::Op::Grayscale(v1::Grayscale {}),
            operation::Op::Resize(v1::Resize {
                width: 300,
                height: 200,
                fit: v1::Fit::Cover as i32,
            }),
            operation::Op::Format(v1::Format {
                format: v1::ImageFormat::Webp as i32,
                quality: 0,
            }),
        ]
        .map(|op| Operation { op: Some(op) });
        let proto = Pipeline::from_proto(&ops).unwrap();
        assert_eq!(json, proto);
        assert_eq!(json.ops().len(), 6);
        assert_eq!(
            json.output_format(),
            Some(&Format::new(FileFormat::Webp, format::DEFAULT_QUALITY).unwrap())
        );
    }

    #[test]
    fn to_proto_round_trips() {
        let pipeline = Pipeline::from_json(
            r#"[{"op":"resize","height":77,"fit":"inside"},{"op":"resize","width":5,"height":9,"fit":"fill"},
                {"op":"blur","sigma":0.5},{"op":"brightness","factor":0},{"op":"grayscale"},
                {"op":"format","format":"jpeg","quality":42}]"#,
        )
        .unwrap();
        let back = Pipeline::from_proto(&pipeline.to_proto()).unwrap();
        assert_eq!(back, pipeline);
        let empty = Pipeline::default();
        assert_eq!(Pipeline::from_proto(&empty.to_proto()).unwrap(), empty);
    }

    #[test]
    fn null_fields_count_as_absent() {
        let pipeline =
            Pipeline::from_json(r#"[{"op":"resize","width":10,"height":null,"fit":null}]"#)
                .unwrap();
        assert_eq!(
            pipeline.ops(),
            &[Op::Resize(Resize::new(10, 0, Fit::Inside).unwrap())]
        );
    }
}
