//! What clients need to know of each op to build a pipeline: its name, a label and a line of
//! help, and each field's kind, range and default. Each op declares its [`Spec`] in its own
//! file; the gateway serves them all at `GET /api/v1/ops` and the web UI's pipeline builder
//! draws its controls from that, so a new op needs no UI change. The ranges are the ops' own
//! (a test checks every bound against the op's validation).

use serde::Serialize;

/// One op as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Spec {
    /// The name used in JSON, the text form, the CLI and error messages.
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    /// In the order the text form's bare values fill them.
    pub fields: &'static [Field],
}

/// One field of an op.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    #[serde(flatten)]
    pub kind: Kind,
    /// What a client may start with; empty means unset (the op's own default applies).
    pub default: &'static str,
    /// Must be set for the op to run.
    pub required: bool,
    /// Applies only when another field of the op has one of some values (a format's
    /// quality for JPEG, WebP and AVIF; resize's gravity for fit cover); `None`: always.
    pub when: Option<When>,
}

/// The condition under which a [`Field`] applies: `field` is one of `values`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct When {
    pub field: &'static str,
    pub values: &'static [&'static str],
}

/// What a field holds, and so the control that edits it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A whole number in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A number in `min..=max`, edited in `step`s; with `min_exclusive` it must be `> min`.
    Float {
        min: f64,
        max: f64,
        step: f64,
        min_exclusive: bool,
    },
    /// One of a fixed list of names.
    Choice {
        choices: &'static [&'static str],
    },
    Bool,
    /// `#rrggbb` or `#rrggbbaa`.
    Colour,
    /// An uploaded image's blob id (the watermark's logo).
    Blob,
    /// A name the operator gave something on the filters (a segmentation model): 1 to 64 of
    /// `a-z 0-9 . _ -`, not starting with a dot.
    Name,
}

impl Spec {
    pub const fn new(
        name: &'static str,
        label: &'static str,
        help: &'static str,
        fields: &'static [Field],
    ) -> Spec {
        Spec {
            name,
            label,
            help,
            fields,
        }
    }

    /// The fields' names, in positional order.
    pub fn field_names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|field| field.name).collect()
    }
}

impl Field {
    const fn of(name: &'static str, label: &'static str, kind: Kind) -> Field {
        Field {
            name,
            label,
            kind,
            default: "",
            required: false,
            when: None,
        }
    }

    pub const fn int(name: &'static str, label: &'static str, min: i64, max: i64) -> Field {
        Field::of(name, label, Kind::Int { min, max })
    }

    /// A number in `min..=max` edited in `step`s.
    pub const fn float(
        name: &'static str,
        label: &'static str,
        (min, max, step): (f64, f64, f64),
    ) -> Field {
        Field::of(
            name,
            label,
            Kind::Float {
                min,
                max,
                step,
                min_exclusive: false,
            },
        )
    }

    pub const fn choice(
        name: &'static str,
        label: &'static str,
        choices: &'static [&'static str],
    ) -> Field {
        Field::of(name, label, Kind::Choice { choices })
    }

    pub const fn flag(name: &'static str, label: &'static str) -> Field {
        Field {
            default: "false",
            ..Field::of(name, label, Kind::Bool)
        }
    }

    pub const fn colour(name: &'static str, label: &'static str) -> Field {
        Field::of(name, label, Kind::Colour)
    }

    pub const fn blob(name: &'static str, label: &'static str) -> Field {
        Field::of(name, label, Kind::Blob)
    }

    pub const fn name(name: &'static str, label: &'static str) -> Field {
        Field::of(name, label, Kind::Name)
    }

    /// The same field starting at `default`.
    pub const fn with_default(self, default: &'static str) -> Field {
        Field { default, ..self }
    }

    pub const fn required(self) -> Field {
        Field {
            required: true,
            ..self
        }
    }

    /// A float that must be greater than its minimum.
    pub const fn above_min(self) -> Field {
        match self.kind {
            Kind::Float { min, max, step, .. } => Field {
                kind: Kind::Float {
                    min,
                    max,
                    step,
                    min_exclusive: true,
                },
                ..self
            },
            _ => self,
        }
    }

    /// Applies only while the op's `field` is one of `values`.
    pub const fn only_when(self, field: &'static str, values: &'static [&'static str]) -> Field {
        Field {
            when: Some(When { field, values }),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::FileFormat;
    use crate::ops::{Op, Pipeline, SPECS};
    use serde_json::{Value, json};

    /// One op with its required and defaulted params at their defaults and `name` set to
    /// `value`.
    fn pipeline_with(op: &Spec, name: &str, value: Value) -> String {
        let mut object = serde_json::Map::new();
        object.insert("op".into(), json!(op.name));
        let base = |p: &&Field| p.required || (!p.default.is_empty() && p.when.is_none());
        for param in op.fields.iter().filter(base) {
            object.insert(param.name.into(), sample(param));
        }
        if op.name == "resize" {
            // Every fit but `inside` needs both sides.
            object.insert("height".into(), json!(1080));
        }
        // A conditional field needs a value of its condition's field it applies to.
        let param = op.fields.iter().find(|p| p.name == name).unwrap();
        if let Some(when) = param.when {
            object.insert(when.field.into(), json!(when.values[0]));
        }
        object.insert(name.into(), value);
        json!([Value::Object(object)]).to_string()
    }

    fn sample(param: &Field) -> Value {
        match param.kind {
            Kind::Blob => json!("a".repeat(64)),
            Kind::Int { .. } => json!(param.default.parse::<i64>().unwrap()),
            Kind::Float { .. } => json!(param.default.parse::<f64>().unwrap()),
            Kind::Choice { choices } => json!(if param.default.is_empty() {
                choices[0]
            } else {
                param.default
            }),
            Kind::Bool => json!(param.default == "true"),
            Kind::Colour => json!("#000000"),
            Kind::Name => json!(param.default),
        }
    }

    fn accepted(json: &str) -> Result<(), String> {
        Pipeline::from_json(json)
            .map(|_| ())
            .map_err(|err| err.message)
    }

    #[test]
    fn every_op_has_one_name() {
        for (i, op) in SPECS.iter().enumerate() {
            assert!(
                SPECS[..i].iter().all(|other| other.name != op.name),
                "{} twice",
                op.name
            );
            let json = json!([{ "op": op.name }]).to_string();
            if let Err(message) = accepted(&json) {
                assert!(!message.contains("unknown op"), "{}: {message}", op.name);
            }
        }
    }

    #[test]
    fn every_default_and_bound_is_accepted_and_past_the_bounds_refused() {
        for op in SPECS {
            for param in op.fields {
                if !param.default.is_empty() && param.kind != Kind::Blob {
                    accepted(&pipeline_with(op, param.name, sample(param)))
                        .unwrap_or_else(|e| panic!("{}.{} default: {e}", op.name, param.name));
                }
                match param.kind {
                    Kind::Int { min, max } => {
                        for ok in [min, max] {
                            accepted(&pipeline_with(op, param.name, json!(ok)))
                                .unwrap_or_else(|e| panic!("{}.{}={ok}: {e}", op.name, param.name));
                        }
                        // For an optional size, 0 is the filter's "not set": the UI leaves
                        // the field empty instead.
                        let below = (min - 1 != 0 || param.required).then_some(min - 1);
                        for bad in below.into_iter().chain([max + 1]) {
                            assert!(
                                accepted(&pipeline_with(op, param.name, json!(bad))).is_err(),
                                "{}.{}={bad} accepted",
                                op.name,
                                param.name
                            );
                        }
                    }
                    Kind::Float {
                        min,
                        max,
                        min_exclusive,
                        ..
                    } => {
                        for ok in [min, max] {
                            accepted(&pipeline_with(op, param.name, json!(ok)))
                                .unwrap_or_else(|e| panic!("{}.{}={ok}: {e}", op.name, param.name));
                        }
                        assert!(
                            accepted(&pipeline_with(op, param.name, json!(max + 0.5))).is_err()
                        );
                        // An exclusive bound refuses the bound itself; an inclusive one, below it.
                        let below = if min_exclusive { 0.0 } else { min - 0.5 };
                        assert!(
                            accepted(&pipeline_with(op, param.name, json!(below))).is_err(),
                            "{}.{}={below} accepted",
                            op.name,
                            param.name
                        );
                    }
                    Kind::Choice { choices } => {
                        for name in choices {
                            accepted(&pipeline_with(op, param.name, json!(name))).unwrap_or_else(
                                |e| panic!("{}.{}={name}: {e}", op.name, param.name),
                            );
                        }
                        assert!(accepted(&pipeline_with(op, param.name, json!("nope"))).is_err());
                    }
                    Kind::Bool => {
                        accepted(&pipeline_with(op, param.name, json!(true)))
                            .unwrap_or_else(|e| panic!("{}.{}=true: {e}", op.name, param.name));
                    }
                    Kind::Colour => {
                        accepted(&pipeline_with(op, param.name, json!("#11223344"))).unwrap();
                        assert!(accepted(&pipeline_with(op, param.name, json!("red"))).is_err());
                    }
                    Kind::Blob => {
                        accepted(&pipeline_with(op, param.name, json!("b".repeat(64)))).unwrap();
                    }
                    Kind::Name => {
                        accepted(&pipeline_with(op, param.name, json!("a-b_c.1"))).unwrap();
                        for bad in ["", "../x", ".x", "A"] {
                            assert!(accepted(&pipeline_with(op, param.name, json!(bad))).is_err());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn format_specific_params_are_refused_elsewhere() {
        let format = Op::spec("format").unwrap();
        for (param, formats) in format
            .fields
            .iter()
            .filter_map(|p| Some((p, p.when?.values)))
        {
            // The filter only objects to a non-default value on another format.
            let value = match param.kind {
                Kind::Bool => json!(true),
                Kind::Int { min, .. } => json!(min),
                _ => continue,
            };
            let other = FileFormat::NAMES
                .iter()
                .find(|f| !formats.contains(f))
                .unwrap();
            let json = json!([{ "op": "format", "format": other, param.name: value }]).to_string();
            if param.name != "quality" {
                assert!(
                    accepted(&json).is_err(),
                    "{} on {other} accepted",
                    param.name
                );
            }
        }
    }

    #[test]
    fn specs_serialize_as_clients_read_them() {
        let json = serde_json::to_value(Op::spec("resize").unwrap()).unwrap();
        assert_eq!(json["name"], "resize");
        assert_eq!(json["fields"][0]["name"], "width");
        assert_eq!(json["fields"][0]["kind"], "int");
        assert_eq!(json["fields"][0]["max"], 16384);
        assert_eq!(json["fields"][2]["choices"][1], "cover");
        let blur = serde_json::to_value(Op::spec("blur").unwrap()).unwrap();
        assert_eq!(blur["fields"][0]["min_exclusive"], true);
        assert_eq!(blur["fields"][0]["required"], true);
    }
}
