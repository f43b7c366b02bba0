//! The operations the pipeline builder offers: each op's parameters, their kinds, valid ranges
//! and defaults. The ranges are the filter's own (a test checks every bound against
//! `pixelmesh_filter`'s validation), so the controls never offer what the mesh refuses.

/// What a parameter holds, and the control that edits it.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    Choice(&'static [&'static str]),
    Bool,
    /// `#rrggbb` or `#rrggbbaa`.
    Colour,
    /// An uploaded image's blob id (the watermark's logo): chosen as a file, uploaded first.
    Blob,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    /// The value a new step starts with; empty means "not set" (the filter's own default).
    pub default: &'static str,
    /// Must be set for the op to run.
    pub required: bool,
    /// Applies only when the op's `format` is one of these; empty: always.
    pub formats: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub params: &'static [Param],
}

const fn int(
    name: &'static str,
    label: &'static str,
    min: i64,
    max: i64,
    default: &'static str,
) -> Param {
    Param {
        name,
        label,
        kind: Kind::Int { min, max },
        default,
        required: false,
        formats: &[],
    }
}

const fn float(
    name: &'static str,
    label: &'static str,
    (min, max, step): (f64, f64, f64),
    min_exclusive: bool,
    default: &'static str,
) -> Param {
    Param {
        name,
        label,
        kind: Kind::Float {
            min,
            max,
            step,
            min_exclusive,
        },
        default,
        required: false,
        formats: &[],
    }
}

const fn choice(
    name: &'static str,
    label: &'static str,
    names: &'static [&'static str],
    default: &'static str,
) -> Param {
    Param {
        name,
        label,
        kind: Kind::Choice(names),
        default,
        required: false,
        formats: &[],
    }
}

const fn required(param: Param) -> Param {
    Param {
        required: true,
        ..param
    }
}

const fn only_for(param: Param, formats: &'static [&'static str]) -> Param {
    Param { formats, ..param }
}

const fn flag(name: &'static str, label: &'static str) -> Param {
    Param {
        name,
        label,
        kind: Kind::Bool,
        default: "false",
        required: false,
        formats: &[],
    }
}

const fn op(
    name: &'static str,
    label: &'static str,
    help: &'static str,
    params: &'static [Param],
) -> OpSpec {
    OpSpec {
        name,
        label,
        help,
        params,
    }
}

const MAX_SIDE: i64 = 16384;
const MAX_COORDINATE: i64 = 1 << 20;
const GRAVITIES: &[&str] = &[
    "centre",
    "north",
    "south",
    "east",
    "west",
    "north_east",
    "north_west",
    "south_east",
    "south_west",
];
pub const FORMATS: &[&str] = &["jpeg", "png", "webp", "gif", "bmp", "tiff"];

/// Every op, in the order the builder lists them.
pub const OPS: &[OpSpec] = &[
    op(
        "resize",
        "Resize",
        "Scale to a width and/or height.",
        &[
            int("width", "Width (px)", 1, MAX_SIDE, "1920"),
            int("height", "Height (px)", 1, MAX_SIDE, ""),
            choice(
                "fit",
                "Fit",
                &["inside", "cover", "fill", "exact"],
                "inside",
            ),
            choice(
                "filter",
                "Filter",
                &["lanczos3", "catmullrom", "bilinear", "nearest"],
                "lanczos3",
            ),
            flag("upscale", "Allow upscaling"),
        ],
    ),
    op(
        "thumbnail",
        "Thumbnail",
        "Fit inside a box, fast.",
        &[
            int("width", "Width (px)", 1, MAX_SIDE, "256"),
            int("height", "Height (px)", 1, MAX_SIDE, "256"),
        ],
    ),
    op(
        "crop",
        "Crop",
        "Cut out a rectangle, at x/y or by gravity.",
        &[
            int("x", "X (px)", 0, MAX_COORDINATE, "0"),
            int("y", "Y (px)", 0, MAX_COORDINATE, "0"),
            required(int("width", "Width (px)", 1, MAX_COORDINATE, "1000")),
            required(int("height", "Height (px)", 1, MAX_COORDINATE, "1000")),
            choice("gravity", "Gravity", GRAVITIES, ""),
        ],
    ),
    op(
        "rotate",
        "Rotate",
        "Turn by an angle in degrees.",
        &[
            required(float(
                "angle",
                "Angle (°)",
                (-360.0, 360.0, 1.0),
                false,
                "90",
            )),
            Param {
                name: "background",
                label: "Background",
                kind: Kind::Colour,
                default: "",
                required: false,
                formats: &[],
            },
        ],
    ),
    op("flip", "Flip", "Mirror top to bottom.", &[]),
    op("flop", "Flop", "Mirror left to right.", &[]),
    op(
        "auto_orient",
        "Auto-orient",
        "Apply the EXIF orientation.",
        &[],
    ),
    op(
        "blur",
        "Blur",
        "Gaussian blur.",
        &[required(float(
            "sigma",
            "Sigma",
            (0.1, 100.0, 0.1),
            true,
            "2",
        ))],
    ),
    op(
        "sharpen",
        "Sharpen",
        "Unsharp mask.",
        &[
            float("sigma", "Sigma", (0.1, 100.0, 0.1), true, "1"),
            float("amount", "Amount", (0.1, 10.0, 0.1), true, "1"),
            int("threshold", "Threshold", 0, 255, "0"),
        ],
    ),
    op("edge", "Edges", "Edge detection.", &[]),
    op(
        "pixelate",
        "Pixelate",
        "Blocks of one colour.",
        &[int("size", "Block size (px)", 1, 4096, "10")],
    ),
    op(
        "brightness",
        "Brightness",
        "Multiply brightness: 1 keeps it.",
        &[required(float(
            "factor",
            "Factor",
            (0.0, 10.0, 0.05),
            false,
            "1.2",
        ))],
    ),
    op(
        "contrast",
        "Contrast",
        "Scale contrast: 1 keeps it.",
        &[required(float(
            "factor",
            "Factor",
            (0.0, 10.0, 0.05),
            false,
            "1.2",
        ))],
    ),
    op(
        "gamma",
        "Gamma",
        "Gamma correction: 1 keeps it.",
        &[required(float(
            "gamma",
            "Gamma",
            (0.1, 10.0, 0.05),
            false,
            "1.2",
        ))],
    ),
    op(
        "saturation",
        "Saturation",
        "Scale saturation: 0 is grey, 1 keeps it.",
        &[required(float(
            "factor",
            "Factor",
            (0.0, 10.0, 0.05),
            false,
            "1.2",
        ))],
    ),
    op(
        "hue",
        "Hue",
        "Rotate hues by degrees.",
        &[required(float(
            "degrees",
            "Degrees",
            (-360.0, 360.0, 1.0),
            false,
            "30",
        ))],
    ),
    op("grayscale", "Grayscale", "Shades of grey.", &[]),
    op("sepia", "Sepia", "Warm brown tones.", &[]),
    op("invert", "Invert", "Negative.", &[]),
    op(
        "threshold",
        "Threshold",
        "Black and white at a level.",
        &[int("level", "Level", 0, 255, "128")],
    ),
    op(
        "watermark",
        "Watermark",
        "Overlay a logo image.",
        &[
            required(Param {
                name: "logo",
                label: "Logo image",
                kind: Kind::Blob,
                default: "",
                required: true,
                formats: &[],
            }),
            choice("gravity", "Position", GRAVITIES, "north_east"),
            float("scale", "Width (% of image)", (1.0, 100.0, 1.0), true, "20"),
            float("opacity", "Opacity", (0.05, 1.0, 0.05), true, "1"),
            int("padding", "Padding (px)", 0, MAX_SIDE, "10"),
        ],
    ),
    op(
        "analyze",
        "Analyze",
        "Report size, colours, sharpness, EXIF.",
        &[],
    ),
    op(
        "format",
        "Format",
        "Encode as; must be the last op.",
        &[
            required(choice("format", "Format", FORMATS, "webp")),
            only_for(int("quality", "Quality", 1, 100, "85"), &["jpeg", "webp"]),
            only_for(flag("progressive", "Progressive"), &["jpeg"]),
            only_for(flag("lossless", "Lossless"), &["webp"]),
            only_for(int("compression", "Compression", 1, 9, "6"), &["png"]),
        ],
    ),
];

/// The op named `name`.
pub fn find(name: &str) -> Option<&'static OpSpec> {
    OPS.iter().find(|op| op.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_filter::ops::Pipeline;
    use serde_json::{Value, json};

    /// One op with its required and defaulted params at their defaults and `name` set to
    /// `value`.
    fn pipeline_with(op: &OpSpec, name: &str, value: Value) -> String {
        let mut object = serde_json::Map::new();
        object.insert("op".into(), json!(op.name));
        let base = |p: &&Param| p.required || (!p.default.is_empty() && p.formats.is_empty());
        for param in op.params.iter().filter(base) {
            object.insert(param.name.into(), sample(param));
        }
        if op.name == "resize" {
            // Every fit but `inside` needs both sides.
            object.insert("height".into(), json!(1080));
        }
        object.insert(name.into(), value);
        if op.name == "format" && name != "format" {
            // Format-specific params need a format they apply to.
            let param = op.params.iter().find(|p| p.name == name).unwrap();
            if let Some(format) = param.formats.first() {
                object.insert("format".into(), json!(format));
            }
        }
        json!([Value::Object(object)]).to_string()
    }

    fn sample(param: &Param) -> Value {
        match param.kind {
            Kind::Blob => json!("a".repeat(64)),
            Kind::Int { .. } => json!(param.default.parse::<i64>().unwrap()),
            Kind::Float { .. } => json!(param.default.parse::<f64>().unwrap()),
            Kind::Choice(names) => json!(if param.default.is_empty() {
                names[0]
            } else {
                param.default
            }),
            Kind::Bool => json!(false),
            Kind::Colour => json!("#000000"),
        }
    }

    fn accepted(json: &str) -> Result<(), String> {
        Pipeline::from_json(json)
            .map(|_| ())
            .map_err(|err| err.message)
    }

    #[test]
    fn every_op_is_one_the_filter_knows() {
        for op in OPS {
            let json = json!([{ "op": op.name }]).to_string();
            if let Err(message) = accepted(&json) {
                assert!(!message.contains("unknown op"), "{}: {message}", op.name);
            }
        }
    }

    #[test]
    fn every_default_and_bound_is_accepted_and_past_the_bounds_refused() {
        for op in OPS {
            for param in op.params {
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
                    Kind::Choice(names) => {
                        for name in names {
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
                }
            }
        }
    }

    #[test]
    fn format_specific_params_are_refused_elsewhere() {
        let format = find("format").unwrap();
        for param in format.params.iter().filter(|p| !p.formats.is_empty()) {
            // The filter only objects to a non-default value on another format.
            let value = match param.kind {
                Kind::Bool => json!(true),
                Kind::Int { min, .. } => json!(min),
                _ => continue,
            };
            let other = FORMATS.iter().find(|f| !param.formats.contains(f)).unwrap();
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
}
