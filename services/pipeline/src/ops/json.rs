//! Reading one op's fields, from a JSON object or from the text form's `key=value` pairs,
//! with messages that name the field.
//!
//! serde's derive would reject unknown fields too, but its messages ("unknown field `widht`,
//! expected one of …") cannot say which op of the pipeline failed, so ops read their fields
//! through this small helper instead. The text form arrives as a map of strings; in that mode
//! the typed getters parse them, so both forms share every op's validation.

use serde_json::{Map, Value};

/// The fields of one JSON op object, checked against the names the op accepts.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    text: bool,
}

/// Where an op's fields came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A JSON object: values carry their JSON types.
    Json,
    /// The text form: every value is a string, parsed by the getter that reads it.
    Text,
}

impl<'a> Fields<'a> {
    /// Fails on the first field that is neither `"op"` nor in `allowed`.
    pub(crate) fn new(
        map: &'a Map<String, Value>,
        allowed: &[&str],
        source: Source,
    ) -> Result<Self, String> {
        if let Some(unknown) = map
            .keys()
            .find(|key| key.as_str() != "op" && !allowed.contains(&key.as_str()))
        {
            return Err(format!("unknown field {}", quoted(unknown)));
        }
        Ok(Fields {
            map,
            text: source == Source::Text,
        })
    }

    /// In text mode, the string to parse for `name`.
    fn text_value(&self, name: &str) -> Option<&'a str> {
        match self.get(name) {
            Some(Value::String(s)) if self.text => Some(s.as_str()),
            _ => None,
        }
    }

    /// `null` counts as absent, so clients may send every field.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    /// An integer field; negative values pass through so the op can report them in range terms.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, String> {
        if let Some(text) = self.text_value(name) {
            return match text.parse::<i64>() {
                Ok(n) => Ok(Some(n)),
                // All digits but too long for i64: out of every range we accept.
                Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Some(i64::MAX))
                }
                Err(_) => Err(format!("{name} must be an integer, got {}", quoted(text))),
            };
        }
        match self.get(name) {
            None => Ok(None),
            Some(value) => match value.as_i64() {
                Some(n) => Ok(Some(n)),
                // Integers above i64::MAX are out of every range we accept.
                None if value.is_u64() => Ok(Some(i64::MAX)),
                None => Err(format!("{name} must be an integer, got {}", brief(value))),
            },
        }
    }

    pub fn number(&self, name: &str) -> Result<Option<f64>, String> {
        if let Some(text) = self.text_value(name) {
            // Rust also parses "inf" and "NaN"; the ops' range checks refuse them.
            return text
                .parse::<f64>()
                .map(Some)
                .map_err(|_| format!("{name} must be a number, got {}", quoted(text)));
        }
        match self.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a number, got {}", brief(value))),
        }
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, String> {
        if let Some(text) = self.text_value(name) {
            return match text {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                other => Err(format!(
                    "{name} must be true or false, got {}",
                    quoted(other)
                )),
            };
        }
        match self.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_bool()
                .map(Some)
                .ok_or_else(|| format!("{name} must be true or false, got {}", brief(value))),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a string, got {}", brief(value))),
        }
    }
}

/// A string in double quotes with JSON escaping, so control characters and quotes in client
/// input cannot garble the message.
pub(crate) fn quoted(s: &str) -> String {
    brief(&Value::from(s))
}

/// A value as JSON for an error message, cut short: clients control its size.
pub(crate) fn brief(value: &Value) -> String {
    const MAX_CHARS: usize = 64;
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// An `f32` parameter as the shortest JSON number that reads back as the same `f32`, so 1.1
/// prints as 1.1, not 1.100000023841858.
pub(crate) fn number(value: f32) -> Value {
    let shortest: f64 = value.to_string().parse().unwrap_or(f64::NAN);
    if shortest.fract() == 0.0 && shortest.abs() < 1e15 {
        // Whole numbers print as 2, not 2.0.
        Value::from(shortest as i64)
    } else {
        serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
    }
}
