//! Reading one op's fields from a JSON object, with messages that name the field.
//!
//! serde's derive would reject unknown fields too, but its messages ("unknown field `widht`,
//! expected one of …") cannot say which op of the pipeline failed, so ops read their fields
//! through this small helper instead.

use serde_json::{Map, Value};

/// The fields of one JSON op object, checked against the names the op accepts.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Fails on the first field that is neither `"op"` nor in `allowed`.
    pub(crate) fn new(map: &'a Map<String, Value>, allowed: &[&str]) -> Result<Self, String> {
        if let Some(unknown) = map
            .keys()
            .find(|key| key.as_str() != "op" && !allowed.contains(&key.as_str()))
        {
            return Err(format!("unknown field {}", quoted(unknown)));
        }
        Ok(Fields { map })
    }

    /// `null` counts as absent, so clients may send every field.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    /// An integer field; negative values pass through so the op can report them in range terms.
    pub(crate) fn integer(&self, name: &str) -> Result<Option<i64>, String> {
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

    pub(crate) fn number(&self, name: &str) -> Result<Option<f64>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a number, got {}", brief(value))),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, String> {
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
