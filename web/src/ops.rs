//! The operations the pipeline builder offers: each op's parameters, their kinds, valid ranges
//! and defaults, as the gateway serves them at `GET /api/v1/ops` from the ops' own specs. The
//! UI keeps no copy of its own, so a new op appears in the builder without a UI change, and
//! the controls never offer what the mesh refuses.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::api::{self, ApiError};

/// Where the gateway serves the op specs (`/api/v1/ops`, under the API base); open without a
/// key.
const OPS_PATH: &str = "/ops";

/// What a parameter holds, and the control that edits it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A whole number in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A number in `min..=max`, edited in `step`s. `min_exclusive`: the filter wants `> min`.
    Float {
        min: f64,
        max: f64,
        step: f64,
        min_exclusive: bool,
    },
    /// One of a fixed list of names.
    Choice {
        choices: Vec<String>,
    },
    Bool,
    /// `#rrggbb` or `#rrggbbaa`.
    Colour,
    /// An uploaded image's blob id (the watermark's logo): chosen as a file, uploaded first.
    Blob,
    /// A name set up on the filters (a segmentation model): `a-z 0-9 . _ -`, typed in.
    Name,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Param {
    pub name: String,
    pub label: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// The value a new step starts with; empty means "not set" (the filter's own default).
    pub default: String,
    /// Must be set for the op to run.
    pub required: bool,
    /// Applies only while another field has one of some values; `None`: always.
    pub when: Option<When>,
}

/// A field's condition: `field` is one of `values`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct When {
    pub field: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OpSpec {
    pub name: String,
    pub label: String,
    pub help: String,
    #[serde(rename = "fields")]
    pub params: Vec<Param>,
}

/// The ops, loaded once per page before the app mounts; kept for the page's life, so steps
/// can hold `&'static` references to them.
static CATALOG: OnceLock<&'static [OpSpec]> = OnceLock::new();
/// Why the ops could not be loaded, shown where the builder would be.
static LOAD_ERROR: OnceLock<String> = OnceLock::new();

/// Every op, in the order the builder lists them; empty until [`fetch`] succeeded.
pub fn all() -> &'static [OpSpec] {
    CATALOG.get().copied().unwrap_or_default()
}

/// The op named `name`.
pub fn find(name: &str) -> Option<&'static OpSpec> {
    all().iter().find(|op| op.name == name)
}

/// Why loading the ops failed, if it did.
pub fn load_error() -> Option<&'static str> {
    LOAD_ERROR.get().map(String::as_str)
}

/// Loads the ops from the gateway; a failure is kept for [`load_error`].
pub async fn fetch() {
    match api::get::<Vec<OpSpec>>(OPS_PATH).await {
        Ok(ops) => set(ops),
        Err(ApiError { message, .. }) => {
            let _ = LOAD_ERROR.set(format!("could not load the operations: {message}"));
        }
    }
}

fn set(ops: Vec<OpSpec>) {
    // Leaked once per page load: the catalog lives as long as the page.
    let _ = CATALOG.set(Vec::leak(ops));
}

/// The catalog as the gateway would serve it, for native tests.
#[cfg(test)]
pub(crate) fn load_for_tests() {
    let json = serde_json::to_string(pixelmesh_pipeline::ops::SPECS).unwrap();
    set(serde_json::from_str(&json).expect("the gateway's specs read as the UI's"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_specs_read_back_with_every_op_and_field() {
        load_for_tests();
        assert_eq!(all().len(), pixelmesh_pipeline::ops::SPECS.len());
        let format = find("format").unwrap();
        assert_eq!(format.params[0].name, "format");
        assert!(format.params[0].required);
        assert!(matches!(&format.params[0].kind, Kind::Choice { choices } if choices.len() >= 6));
        let when = |param: &Param| param.when.clone().map(|w| (w.field, w.values));
        assert_eq!(
            when(&format.params[1]),
            Some((
                "format".into(),
                vec!["jpeg".into(), "webp".into(), "avif".into()]
            ))
        );
        let effort = format.params.iter().find(|p| p.name == "effort").unwrap();
        assert_eq!(when(effort), Some(("format".into(), vec!["avif".into()])));
        let resize = find("resize").unwrap();
        let gravity = resize.params.iter().find(|p| p.name == "gravity").unwrap();
        assert_eq!(when(gravity), Some(("fit".into(), vec!["cover".into()])));
        let blur = find("blur").unwrap();
        assert!(matches!(
            blur.params[0].kind,
            Kind::Float {
                min_exclusive: true,
                ..
            }
        ));
        assert_eq!(find("watermark").unwrap().params[0].kind, Kind::Blob);
        assert_eq!(find("rotate").unwrap().params[1].kind, Kind::Colour);
        assert!(find("nope").is_none());
    }
}
