//! The analysis table's rows, read from the `analyze` and `describe` reports of a job's
//! outputs.

use serde_json::Value;

use crate::api::ImageView;

/// One report of one image, as the table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub image: String,
    pub size: String,
    pub input: String,
    pub brightness: String,
    pub sharpness: String,
    /// Dominant colours: `#rrggbb` and their share, 0 to 1.
    pub colours: Vec<(String, f64)>,
    pub phash: String,
    /// How many faces the report lists; empty for a report without the field.
    pub faces: String,
    /// Camera make and model from EXIF, when the input had them.
    pub camera: String,
    /// A `describe` report's caption, then its tags after a `—`.
    pub description: String,
}

/// A row per `analyze` or `describe` report of every image with an output, in image order.
pub fn rows(images: &[ImageView]) -> Vec<Row> {
    images
        .iter()
        .filter_map(|image| Some((image, image.output.as_ref()?)))
        .flat_map(|(image, output)| {
            output
                .analysis
                .iter()
                .map(move |report| row(&image.name, report))
        })
        .collect()
}

fn row(image: &str, report: &Value) -> Row {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let number = |key: &str, decimals: usize| {
        report
            .get(key)
            .and_then(Value::as_f64)
            .map_or(String::new(), |n| format!("{n:.decimals$}"))
    };
    let input = &report["input"];
    let exif = &input["exif"];
    let camera = [text(&exif["Make"]), text(&exif["Model"])]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let size = match (report["width"].as_u64(), report["height"].as_u64()) {
        (Some(w), Some(h)) => format!("{w}×{h}"),
        _ => String::new(),
    };
    let input_desc = match (
        input["format"].as_str(),
        input["width"].as_u64(),
        input["height"].as_u64(),
    ) {
        (Some(f), Some(w), Some(h)) => format!("{f} {w}×{h}"),
        (Some(f), _, _) => f.to_string(),
        _ => String::new(),
    };
    let colours = report["dominant_colours"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| Some((c["colour"].as_str()?.to_string(), c["share"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let tags = report["tags"]
        .as_array()
        .map(|tags| tags.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let description = match (text(&report["caption"]), tags.is_empty()) {
        (caption, true) => caption,
        (caption, false) => format!("{caption} — {tags}"),
    };
    Row {
        image: image.to_string(),
        size,
        input: input_desc,
        brightness: number("brightness", 1),
        sharpness: number("sharpness", 1),
        colours,
        phash: text(&report["phash"]),
        faces: report["faces"]
            .as_array()
            .map_or(String::new(), |faces| faces.len().to_string()),
        camera,
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OutputView;
    use serde_json::json;

    #[test]
    fn reports_become_rows_and_images_without_output_are_skipped() {
        let report = json!({
            "width": 640, "height": 480,
            "input": {"format": "jpeg", "width": 4000, "height": 3000, "colour_type": "rgb8",
                      "exif": {"Make": "Canon", "Model": "EOS 5D"}},
            "brightness": 117.456, "sharpness": 1234.5678, "phash": "c3d2a1b0f0e0d0c0",
            "faces": [{"x": 1, "y": 2, "w": 30, "h": 30, "score": 9.0}],
            "dominant_colours": [{"colour": "#1e3c5a", "share": 0.5}, {"colour": "#fa0000", "share": 0.25}],
        });
        let images = vec![
            ImageView {
                name: "a.jpg".into(),
                output: Some(OutputView {
                    analysis: vec![
                        report,
                        json!({"width": 1, "height": 2}),
                        json!({"op": "describe", "width": 512, "height": 384,
                               "caption": "A kite over a beach.", "tags": ["kite", "sky"]}),
                    ],
                    ..OutputView::default()
                }),
                ..ImageView::default()
            },
            ImageView {
                name: "broken.png".into(),
                ..ImageView::default()
            },
        ];
        let rows = rows(&images);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            Row {
                image: "a.jpg".into(),
                size: "640×480".into(),
                input: "jpeg 4000×3000".into(),
                brightness: "117.5".into(),
                sharpness: "1234.6".into(),
                colours: vec![("#1e3c5a".into(), 0.5), ("#fa0000".into(), 0.25)],
                phash: "c3d2a1b0f0e0d0c0".into(),
                faces: "1".into(),
                camera: "Canon EOS 5D".into(),
                description: String::new(),
            }
        );
        // A sparse report leaves cells empty rather than failing.
        assert_eq!(rows[1].size, "1×2");
        assert_eq!(rows[1].camera, "");
        assert_eq!(rows[1].faces, "");
        assert!(rows[1].colours.is_empty());
        assert_eq!(rows[2].description, "A kite over a beach. — kite, sky");
        assert_eq!(rows[2].size, "512×384");
    }
}
