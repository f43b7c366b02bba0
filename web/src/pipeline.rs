//! The pipeline builder's state: ordered steps, each an op with its parameter values as the
//! user typed them, and its translation to the JSON pipeline the API takes. Validation here
//! mirrors the filter's messages (`op 2 (blur): sigma must be …`) so mistakes show before
//! submitting; the gateway validates again.

use serde_json::{Map, Value};

use crate::ops::{self, Kind, OpSpec, Param};

/// One op in the pipeline, with a value per parameter (`""` = not set).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Stable across moves, for keyed lists.
    pub id: u32,
    pub op: &'static OpSpec,
    pub values: Vec<String>,
}

impl Step {
    fn new(id: u32, op: &'static OpSpec) -> Step {
        Step {
            id,
            op,
            values: op.params.iter().map(|p| p.default.clone()).collect(),
        }
    }

    pub fn value(&self, name: &str) -> &str {
        self.op
            .params
            .iter()
            .position(|p| p.name == name)
            .map_or("", |i| self.values[i].as_str())
    }

    /// Whether `param` means anything with the step's other values (a format's quality only
    /// for JPEG, WebP and AVIF; resize's gravity only for fit cover).
    pub fn applies(&self, param: &Param) -> bool {
        param.when.as_ref().is_none_or(|when| {
            let value = self.value(&when.field);
            when.values.iter().any(|v| v == value)
        })
    }

    /// The step as a JSON op object, or what is wrong with it.
    fn to_json(&self) -> Result<Value, String> {
        let mut object = Map::new();
        object.insert("op".into(), Value::from(self.op.name.as_str()));
        for (param, raw) in self.op.params.iter().zip(&self.values) {
            if !self.applies(param) {
                continue;
            }
            if let Some(value) = param_value(param, raw.trim())? {
                object.insert(param.name.clone(), value);
            }
        }
        if matches!(self.op.name.as_str(), "resize" | "thumbnail")
            && !object.contains_key("width")
            && !object.contains_key("height")
        {
            return Err("width or height is required".into());
        }
        if let Some(fit) = object.get("fit").and_then(Value::as_str)
            && fit != "inside"
            && !(object.contains_key("width") && object.contains_key("height"))
        {
            return Err(format!("fit {fit} needs both width and height"));
        }
        Ok(Value::Object(object))
    }
}

/// One parameter's JSON value; `None` when unset (the filter's default applies).
fn param_value(param: &Param, raw: &str) -> Result<Option<Value>, String> {
    let name = &param.name;
    if raw.is_empty() {
        return match (param.required, &param.kind) {
            (true, Kind::Blob) => Err(format!("{name}: choose an image")),
            (true, _) => Err(format!("{name} is required")),
            _ => Ok(None),
        };
    }
    let value = match param.kind {
        Kind::Int { min, max } => {
            let n = raw
                .parse::<i64>()
                .map_err(|_| format!("{name} must be a whole number, got {raw:?}"))?;
            if !(min..=max).contains(&n) {
                return Err(format!("{name} must be between {min} and {max}, got {n}"));
            }
            Value::from(n)
        }
        Kind::Float {
            min,
            max,
            min_exclusive,
            ..
        } => {
            let n = raw
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| format!("{name} must be a number, got {raw:?}"))?;
            let low_ok = if min_exclusive { n > 0.0 } else { n >= min };
            if !low_ok || n > max {
                let low = if min_exclusive {
                    "> 0".to_string()
                } else {
                    format!(">= {min}")
                };
                return Err(format!("{name} must be {low} and <= {max}, got {n}"));
            }
            Value::from(n)
        }
        Kind::Choice { ref choices } => {
            if !choices.iter().any(|c| c == raw) {
                return Err(format!(
                    "{name} must be one of {}, got {raw:?}",
                    choices.join(", ")
                ));
            }
            Value::from(raw)
        }
        // Sent only when it differs from the default: `strip` starts checked.
        Kind::Bool if raw == param.default || (raw != "true" && param.default.is_empty()) => {
            return Ok(None);
        }
        Kind::Bool => Value::from(raw == "true"),
        Kind::Colour => {
            let hex = raw.strip_prefix('#').unwrap_or("");
            if !matches!(hex.len(), 6 | 8) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{name} must be a hex colour #rrggbb or #rrggbbaa, got {raw:?}"
                ));
            }
            Value::from(raw.to_ascii_lowercase())
        }
        Kind::Name => {
            // The filters' rule (`check_model_name`, which the bundle does not link: the
            // pipeline crate is native code); a test holds the two to the same answers.
            if !is_model_name(raw) {
                return Err(format!(
                    "{name} must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-', not starting with '.', got {raw:?}"
                ));
            }
            Value::from(raw)
        }
        Kind::Blob => {
            if raw.len() != 64 || !raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!("{name}: choose an image"));
            }
            Value::from(raw)
        }
    };
    Ok(Some(value))
}

/// A name that can only name a file in the filters' model directory.
fn is_model_name(raw: &str) -> bool {
    (1..=64).contains(&raw.len())
        && !raw.starts_with('.')
        && raw
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// The builder: steps in order. `format` is kept last, as the filter requires.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Builder {
    steps: Vec<Step>,
    next_id: u32,
}

impl Builder {
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    fn has_format(&self) -> bool {
        self.steps.iter().any(|s| s.op.name == "format")
    }

    /// Whether `name` can be added now (a second `format` cannot).
    pub fn can_add(&self, name: &str) -> bool {
        ops::find(name).is_some() && !(name == "format" && self.has_format())
    }

    /// Adds op `name` at the end, before a `format` step; its id.
    pub fn add(&mut self, name: &str) -> Option<u32> {
        if !self.can_add(name) {
            return None;
        }
        let op = ops::find(name)?;
        let id = self.next_id;
        self.next_id += 1;
        let at = match self.steps.last() {
            Some(last) if last.op.name == "format" => self.steps.len() - 1,
            _ => self.steps.len(),
        };
        self.steps.insert(at, Step::new(id, op));
        Some(id)
    }

    pub fn remove(&mut self, id: u32) {
        self.steps.retain(|s| s.id != id);
    }

    /// Moves step `id` by `delta` places (-1 up, +1 down); a move that would put another op
    /// after `format` is refused.
    pub fn shift(&mut self, id: u32, delta: isize) -> bool {
        let Some(from) = self.steps.iter().position(|s| s.id == id) else {
            return false;
        };
        let Some(to) = from
            .checked_add_signed(delta)
            .filter(|&to| to < self.steps.len())
        else {
            return false;
        };
        self.steps.swap(from, to);
        if self.has_format() && self.steps.last().is_some_and(|s| s.op.name != "format") {
            self.steps.swap(from, to);
            return false;
        }
        true
    }

    pub fn set(&mut self, id: u32, name: &str, value: String) {
        if let Some(step) = self.steps.iter_mut().find(|s| s.id == id)
            && let Some(i) = step.op.params.iter().position(|p| p.name == name)
        {
            step.values[i] = value;
        }
    }

    /// What is wrong with each step, in the filter's words; empty when the pipeline is good.
    pub fn errors(&self) -> Vec<String> {
        match self.to_json() {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        }
    }

    /// The pipeline as the API's JSON array, or every step's problem.
    pub fn to_json(&self) -> Result<Value, Vec<String>> {
        if self.steps.is_empty() {
            return Err(vec!["add at least one operation".into()]);
        }
        let mut ops = Vec::new();
        let mut errors = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            match step.to_json() {
                Ok(op) => ops.push(op),
                Err(err) => errors.push(format!("op {} ({}): {err}", i + 1, step.op.name)),
            }
        }
        if errors.is_empty() {
            Ok(Value::Array(ops))
        } else {
            Err(errors)
        }
    }

    /// A builder holding preset `name`'s steps.
    pub fn preset(name: &str) -> Option<Builder> {
        let preset = PRESETS.iter().find(|p| p.name == name)?;
        let mut builder = Builder::default();
        for (op, values) in preset.steps {
            let id = builder.add(op)?;
            for (param, value) in *values {
                builder.set(id, param, (*value).to_string());
            }
        }
        Some(builder)
    }
}

/// A ready-made pipeline.
pub struct Preset {
    pub name: &'static str,
    pub label: &'static str,
    steps: &'static [(&'static str, &'static [(&'static str, &'static str)])],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "web",
        label: "Web 1920 WebP",
        steps: &[
            ("resize", &[("width", "1920"), ("fit", "inside")]),
            ("format", &[("format", "webp"), ("quality", "82")]),
        ],
    },
    Preset {
        name: "thumbnail",
        label: "Thumbnail 256",
        steps: &[
            ("thumbnail", &[("width", "256"), ("height", "256")]),
            ("format", &[("format", "jpeg"), ("quality", "80")]),
        ],
    },
    Preset {
        name: "watermark",
        label: "Watermark",
        steps: &[
            ("resize", &[("width", "1920")]),
            (
                "watermark",
                &[
                    ("gravity", "south_east"),
                    ("scale", "15"),
                    ("opacity", "0.8"),
                ],
            ),
            ("format", &[("format", "jpeg"), ("quality", "85")]),
        ],
    },
    Preset {
        name: "analyze",
        label: "Analyze",
        steps: &[("analyze", &[])],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn builder() -> Builder {
        ops::load_for_tests();
        Builder::default()
    }

    #[test]
    fn steps_become_the_api_json_with_unset_and_false_values_left_out() {
        let mut b = builder();
        let resize = b.add("resize").unwrap();
        b.set(resize, "width", " 800 ".into());
        let blur = b.add("blur").unwrap();
        b.set(blur, "sigma", "1.5".into());
        let format = b.add("format").unwrap();
        b.set(format, "format", "jpeg".into());
        b.set(format, "progressive", "true".into());
        assert_eq!(
            b.to_json().unwrap(),
            json!([
                {"op": "resize", "width": 800, "fit": "inside", "filter": "lanczos3"},
                {"op": "blur", "sigma": 1.5},
                {"op": "format", "format": "jpeg", "quality": 85, "progressive": true},
            ])
        );
        // Params of other formats are dropped, not sent.
        b.set(format, "format", "png".into());
        assert_eq!(
            b.to_json().unwrap()[2],
            json!({"op": "format", "format": "png", "compression": 6})
        );
        // A flag that starts checked (strip) is sent when unchecked, and only then.
        b.set(format, "strip", "false".into());
        b.set(format, "keep_icc", "true".into());
        assert_eq!(
            b.to_json().unwrap()[2],
            json!({"op": "format", "format": "png", "compression": 6, "strip": false, "keep_icc": true})
        );
        b.set(format, "strip", "true".into());
        assert!(b.to_json().unwrap()[2].get("strip").is_none());
    }

    #[test]
    fn a_model_name_is_typed_checked_and_sent_unless_the_default() {
        let mut b = builder();
        let remove = b.add("remove_background").unwrap();
        assert_eq!(
            b.to_json().unwrap(),
            json!([{"op": "remove_background", "model": "u2net"}])
        );
        b.set(remove, "model", "isnet-general-use".into());
        b.set(remove, "refine", "false".into());
        assert_eq!(
            b.to_json().unwrap(),
            json!([{"op": "remove_background", "model": "isnet-general-use", "refine": false}])
        );
        b.set(remove, "model", "../secrets".into());
        let error = b.to_json().unwrap_err().join("; ");
        assert!(
            error.contains("model must be 1 to 64 characters"),
            "{error}"
        );
        let long = "a".repeat(65);
        for name in [
            "u2net",
            "isnet-general-use",
            "v1.2_x",
            "",
            ".hidden",
            "../secrets",
            "U2NET",
            "a b",
            "é",
            &long[..64],
            &long,
        ] {
            assert_eq!(
                is_model_name(name),
                pixelmesh_pipeline::ops::remove_background::check_model_name(name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn resize_gravity_shows_and_is_sent_for_fit_cover_only() {
        let mut b = builder();
        let resize = b.add("resize").unwrap();
        b.set(resize, "height", "600".into());
        b.set(resize, "gravity", "smart".into());
        let step = &b.steps()[0];
        let gravity = step.op.params.iter().find(|p| p.name == "gravity").unwrap();
        assert!(!step.applies(gravity), "hidden for fit inside");
        assert!(b.to_json().unwrap()[0].get("gravity").is_none());
        b.set(resize, "fit", "cover".into());
        assert!(b.steps()[0].applies(gravity));
        assert_eq!(b.to_json().unwrap()[0]["gravity"], "smart");
    }

    #[test]
    fn every_preset_is_a_pipeline_the_filter_accepts() {
        ops::load_for_tests();
        for preset in PRESETS {
            let mut builder = Builder::preset(preset.name).unwrap();
            if let Some(step) = builder.steps().iter().find(|s| s.op.name == "watermark") {
                // The logo is the user's upload.
                assert_eq!(
                    builder.errors(),
                    vec!["op 2 (watermark): logo: choose an image"]
                );
                let id = step.id;
                builder.set(id, "logo", "c".repeat(64));
            }
            let json = builder.to_json().unwrap().to_string();
            pixelmesh_pipeline::ops::Pipeline::from_json(&json)
                .unwrap_or_else(|e| panic!("preset {}: {}", preset.name, e.message));
        }
    }

    #[test]
    fn errors_name_the_op_and_field_like_the_filter() {
        let mut b = builder();
        assert_eq!(b.errors(), vec!["add at least one operation"]);
        let blur = b.add("blur").unwrap();
        b.set(blur, "sigma", "-1".into());
        let resize = b.add("resize").unwrap();
        b.set(resize, "width", "".into());
        let rotate = b.add("rotate").unwrap();
        b.set(rotate, "background", "red".into());
        let cover = b.add("resize").unwrap();
        b.set(cover, "fit", "cover".into());
        let format = b.add("format").unwrap();
        b.set(format, "quality", "101".into());
        assert_eq!(
            b.errors(),
            vec![
                "op 1 (blur): sigma must be > 0 and <= 100, got -1",
                "op 2 (resize): width or height is required",
                r#"op 3 (rotate): background must be a hex colour #rrggbb or #rrggbbaa, got "red""#,
                "op 4 (resize): fit cover needs both width and height",
                "op 5 (format): quality must be between 1 and 100, got 101",
            ]
        );
        b.set(blur, "sigma", "abc".into());
        assert_eq!(
            b.errors()[0],
            r#"op 1 (blur): sigma must be a number, got "abc""#
        );
    }

    #[test]
    fn format_stays_last_and_single() {
        let mut b = builder();
        let format = b.add("format").unwrap();
        assert!(!b.can_add("format"));
        assert_eq!(b.add("format"), None);
        let blur = b.add("blur").unwrap();
        let names = |b: &Builder| {
            b.steps()
                .iter()
                .map(|s| s.op.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&b), ["blur", "format"]);
        assert!(!b.shift(format, -1), "format moved before another op");
        assert!(!b.shift(blur, 1));
        let gray = b.add("grayscale").unwrap();
        assert!(b.shift(gray, -1));
        assert_eq!(names(&b), ["grayscale", "blur", "format"]);
        assert!(!b.shift(gray, -1), "moved past the top");
        b.remove(blur);
        assert_eq!(names(&b), ["grayscale", "format"]);
        assert_eq!(b.add("nope"), None);
    }
}
