//! The compact text form of a pipeline, for URLs and the command line:
//! `resize:w=1920/blur:sigma=2/format:webp,q=85`.
//!
//! Ops are separated by `/`; an op is its name, then optionally `:` and comma-separated
//! arguments. An argument is `field=value`, or a bare value that fills the op's fields in
//! order (`resize:1920,1080` is width 1920, height 1080; `format:webp` is the format). A few
//! short names stand for common fields: `w` width, `h` height, `q` quality, `g` gravity.
//!
//! Parsing only splits the text: the op's own field reader validates the values, so the text,
//! JSON and protobuf forms accept exactly the same pipelines.

use serde_json::{Map, Value};

use super::json::quoted;

/// Short field names, each accepted only by ops that have the long one.
const ALIASES: &[(&str, &str)] = &[
    ("w", "width"),
    ("h", "height"),
    ("q", "quality"),
    ("g", "gravity"),
];

/// Longest text pipeline accepted; far above any real one, it keeps messages short.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

/// One op as written: its name and its fields as strings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TextOp<'a> {
    pub name: &'a str,
    pub fields: Map<String, Value>,
}

/// Splits `text` into ops. `fields_of` gives an op's fields in positional order, or `None`
/// for an unknown op. Errors carry the op's 1-based position, as every pipeline error does.
pub(crate) fn split<'a>(
    text: &'a str,
    fields_of: impl Fn(&str) -> Option<Vec<&'static str>>,
) -> Result<Vec<TextOp<'a>>, (usize, Option<&'a str>, String)> {
    if text.len() > MAX_TEXT_BYTES {
        return Err((
            0,
            None,
            format!("pipeline text is over {MAX_TEXT_BYTES} bytes"),
        ));
    }
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split('/')
        .enumerate()
        .map(|(i, part)| {
            let position = i + 1;
            let (name, args) = match part.split_once(':') {
                Some((name, args)) => (name.trim(), Some(args)),
                None => (part.trim(), None),
            };
            if name.is_empty() {
                return Err((position, None, "empty op".to_string()));
            }
            let Some(known) = fields_of(name) else {
                return Err((position, None, format!("unknown op {}", quoted(name))));
            };
            let fields = args
                .map(|args| parse_args(args, &known))
                .transpose()
                .map_err(|msg| (position, Some(name), msg))?
                .unwrap_or_default();
            Ok(TextOp { name, fields })
        })
        .collect()
}

fn parse_args(args: &str, known: &[&'static str]) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    let mut positional = known.iter();
    let mut named_seen = false;
    for arg in args.split(',') {
        let arg = arg.trim();
        if arg.is_empty() {
            return Err("empty argument".into());
        }
        let (field, value) = match arg.split_once('=') {
            Some((key, value)) => {
                named_seen = true;
                let key = key.trim();
                let field = ALIASES
                    .iter()
                    .find(|(short, long)| *short == key && known.contains(long))
                    .map_or(key, |(_, long)| long);
                (field.to_string(), value.trim())
            }
            None if named_seen => {
                return Err(format!(
                    "value {} without a field name after named ones",
                    quoted(arg)
                ));
            }
            None => match positional.next() {
                Some(field) => (field.to_string(), arg),
                None => return Err(format!("too many values at {}", quoted(arg))),
            },
        };
        if fields
            .insert(field.clone(), Value::String(value.to_string()))
            .is_some()
        {
            return Err(format!("{field} given twice"));
        }
    }
    Ok(fields)
}

/// Writes one op in the text form; `params` are its fields in canonical order.
pub(crate) fn write_op(name: &str, params: &[(&'static str, Value)]) -> String {
    if params.is_empty() {
        return name.to_string();
    }
    let args: Vec<String> = params
        .iter()
        .map(|(field, value)| match value {
            Value::String(s) => format!("{field}={s}"),
            other => format!("{field}={other}"),
        })
        .collect();
    format!("{name}:{}", args.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(name: &str) -> Option<Vec<&'static str>> {
        match name {
            "resize" => Some(vec!["width", "height", "fit"]),
            "format" => Some(vec!["format", "quality"]),
            "grayscale" => Some(vec![]),
            _ => None,
        }
    }

    fn strings(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn splits_names_positional_values_and_aliases() {
        let ops = split("resize:w=1920/grayscale/format:webp,q=85", fields_of).unwrap();
        assert_eq!(
            ops,
            [
                TextOp {
                    name: "resize",
                    fields: strings(&[("width", "1920")])
                },
                TextOp {
                    name: "grayscale",
                    fields: Map::new()
                },
                TextOp {
                    name: "format",
                    fields: strings(&[("format", "webp"), ("quality", "85")])
                },
            ]
        );
        let ops = split(" resize:300,200,fit=cover ", fields_of).unwrap();
        assert_eq!(
            ops[0].fields,
            strings(&[("width", "300"), ("height", "200"), ("fit", "cover")])
        );
        assert!(split("", fields_of).unwrap().is_empty());
    }

    #[test]
    fn mistakes_name_the_op_and_position() {
        fn err(text: &str) -> (usize, Option<&str>, String) {
            split(text, fields_of).unwrap_err()
        }
        assert_eq!(
            err("grayscale/sharpn"),
            (2, None, r#"unknown op "sharpn""#.into())
        );
        assert_eq!(err("grayscale//grayscale"), (2, None, "empty op".into()));
        assert_eq!(
            err("resize:w=1,w=2"),
            (1, Some("resize"), "width given twice".into())
        );
        assert_eq!(
            err("resize:1,2,inside,9"),
            (1, Some("resize"), r#"too many values at "9""#.into())
        );
        assert_eq!(
            err("resize:w=1,5"),
            (
                1,
                Some("resize"),
                r#"value "5" without a field name after named ones"#.into()
            )
        );
        assert_eq!(
            err("resize:w=1,,h=2"),
            (1, Some("resize"), "empty argument".into())
        );
        // An alias only applies where its field exists: `q` on resize stays unknown to it.
        assert_eq!(
            split("resize:q=5", fields_of).unwrap()[0].fields,
            strings(&[("q", "5")])
        );
        let long = "grayscale/".repeat(2000);
        assert!(err(&long).2.contains("over 8192 bytes"));
    }

    #[test]
    fn writes_ops() {
        assert_eq!(write_op("grayscale", &[]), "grayscale");
        assert_eq!(
            write_op(
                "format",
                &[
                    ("format", Value::from("webp")),
                    ("quality", Value::from(85))
                ]
            ),
            "format:format=webp,quality=85"
        );
    }
}
