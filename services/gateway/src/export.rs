//! A job's analysis reports as a download: `GET /api/v1/jobs/{id}/analysis.{csv,json,xlsx}`.
//!
//! * [`rows`] — one [`AnalysisRow`] per image per `analyze` or `describe` report, and one
//!   row for an image without a report, so failed images show up in the export too;
//! * [`to_csv`] — those rows as RFC 4180 CSV, formula-defused like the bundle's manifest;
//! * [`to_xlsx`] — the same rows as an Office Open XML workbook with one sheet, `analysis`,
//!   written by `rust_xlsxwriter`;
//! * [`to_json`] — the reports whole, grouped by image;
//! * [`batch_csv_rows`] — a batch's table (a URL list's jobs), written a job at a time.
//!
//! The tables leave the 256-bin histogram out: 256 columns would bury everything else, and a
//! chart of it wants the JSON anyway. A job has at most a thousand images, so a job's export is
//! built whole in memory; a batch's streams, one job at a time.

use std::borrow::Cow;

use pixelmesh_pipeline::ops::analyze::DOMINANT_COLOURS;
use pixelmesh_proto::Error;
use pixelmesh_proto::v1::{Image, Job};
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format as XlsxFormat, Workbook, XlsxError};
use serde::Serialize;
use serde_json::Value;

use crate::bundle::csv_field;

/// The tables' header, in column order; [`AnalysisRow`]'s cells follow it.
pub const COLUMNS: [&str; 32] = [
    "index",
    "name",
    "state",
    "report",
    "width",
    "height",
    "input_format",
    "input_width",
    "input_height",
    "colour_type",
    "colour_profile",
    "has_alpha",
    "transparent",
    "brightness",
    "sharpness",
    "phash",
    "faces",
    "face_boxes",
    "caption",
    "tags",
    "colour_1",
    "colour_2",
    "colour_3",
    "colour_4",
    "colour_5",
    "share_1",
    "share_2",
    "share_3",
    "share_4",
    "share_5",
    "exif",
    "error",
];

// The colour and share columns are spelled out above: reports listing more colours need more.
const _: () = assert!(DOMINANT_COLOURS == 5);

/// One line of the tables: one report of one image, or an image without a report. What the
/// report does not hold is `None` or empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalysisRow {
    pub index: u32,
    pub name: String,
    /// Where a URL input was fetched from; in the batch table only (see
    /// [`batch_csv_header`]).
    pub url: String,
    pub state: String,
    /// The report's position among the pipeline's `analyze` and `describe` ops; `None`
    /// without a report.
    pub report: Option<usize>,
    /// The image's size where the `analyze` op ran.
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub input_format: String,
    pub input_width: Option<u64>,
    pub input_height: Option<u64>,
    pub colour_type: String,
    /// The embedded ICC profile and what decoding did with it; empty without one.
    pub colour_profile: String,
    pub has_alpha: Option<bool>,
    pub transparent: Option<bool>,
    pub brightness: Option<f64>,
    pub sharpness: Option<f64>,
    pub phash: String,
    /// How many faces the report lists; `None` for reports from before faces were detected.
    pub faces: Option<u64>,
    /// Each face as `x,y,w,h`, separated by `; `, largest first.
    pub face_boxes: String,
    /// A `describe` op's caption, and its tags separated by `; `.
    pub caption: String,
    pub tags: String,
    /// Most common first, at most [`DOMINANT_COLOURS`].
    pub colours: Vec<DominantColour>,
    /// The input's EXIF fields as `Tag=value; Tag=value`, in the report's order.
    pub exif: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DominantColour {
    /// `#rrggbb`.
    pub colour: String,
    /// Share of the (not fully transparent) pixels, 0..=1.
    pub share: Option<f64>,
}

/// The rows of `job`'s analysis: its images in order, each with one row per report.
pub fn rows(job: &Job) -> Vec<AnalysisRow> {
    let mut rows = Vec::with_capacity(job.images.len());
    for image in &job.images {
        let bare = AnalysisRow {
            index: image.index,
            name: image.name.clone(),
            url: image.url.clone(),
            state: image.state().label().to_owned(),
            error: image.error.clone(),
            ..AnalysisRow::default()
        };
        let reports = reports(image);
        if reports.is_empty() {
            rows.push(bare);
            continue;
        }
        for (position, report) in reports.iter().enumerate() {
            let mut row = AnalysisRow {
                report: Some(position),
                ..bare.clone()
            };
            match serde_json::from_str::<Value>(report) {
                Ok(report) if report.is_object() => row.measure(&report),
                // Reports come from our own workers, so this is a bug: say so, not an empty row.
                _ if row.error.is_empty() => row.error = "unreadable analysis report".to_owned(),
                _ => {}
            }
            rows.push(row);
        }
    }
    rows
}

/// The stored reports of `image`, in pipeline order; none if it has no output.
fn reports(image: &Image) -> &[String] {
    image
        .output
        .as_ref()
        .map_or(&[], |output| output.analysis.as_slice())
}

impl AnalysisRow {
    /// Copies the measurements of `report` (a JSON object, see the `analyze` op; a `describe`
    /// op's holds its size, caption and tags).
    fn measure(&mut self, report: &Value) {
        // Indexing a missing key gives `null`, so a field the report lacks stays empty.
        let input = &report["input"];
        self.width = report["width"].as_u64();
        self.height = report["height"].as_u64();
        self.input_format = text(&input["format"]);
        self.input_width = input["width"].as_u64();
        self.input_height = input["height"].as_u64();
        self.colour_type = text(&input["colour_type"]);
        self.colour_profile = text(&input["colour_profile"]);
        self.has_alpha = report["has_alpha"].as_bool();
        self.transparent = report["transparent"].as_bool();
        self.brightness = report["brightness"].as_f64();
        self.sharpness = report["sharpness"].as_f64();
        self.phash = text(&report["phash"]);
        if let Some(faces) = report["faces"].as_array() {
            self.faces = Some(faces.len() as u64);
            self.face_boxes = faces
                .iter()
                .map(|face| {
                    ["x", "y", "w", "h"]
                        .map(|key| face[key].as_u64().unwrap_or_default().to_string())
                        .join(",")
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
        self.caption = text(&report["caption"]);
        self.tags = report["tags"]
            .as_array()
            .map(|tags| tags.iter().map(text).collect::<Vec<_>>().join("; "))
            .unwrap_or_default();
        self.colours = report["dominant_colours"]
            .as_array()
            .map(|colours| {
                colours
                    .iter()
                    .filter_map(|entry| {
                        Some(DominantColour {
                            colour: entry["colour"].as_str()?.to_owned(),
                            share: entry["share"].as_f64(),
                        })
                    })
                    .take(DOMINANT_COLOURS)
                    .collect()
            })
            .unwrap_or_default();
        self.exif = input["exif"]
            .as_object()
            .map(|fields| {
                fields
                    .iter()
                    .map(|(tag, value)| format!("{tag}={}", text(value)))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
    }

    /// The row's cells, one per entry of [`COLUMNS`].
    fn cells(&self) -> Vec<Cell<'_>> {
        let mut cells = vec![
            Cell::Integer(self.index.into()),
            Cell::Text(&self.name),
            Cell::Text(&self.state),
            Cell::integer(self.report.map(|report| report as u64)),
            Cell::integer(self.width),
            Cell::integer(self.height),
            Cell::Text(&self.input_format),
            Cell::integer(self.input_width),
            Cell::integer(self.input_height),
            Cell::Text(&self.colour_type),
            Cell::Text(&self.colour_profile),
            Cell::boolean(self.has_alpha),
            Cell::boolean(self.transparent),
            Cell::decimal(self.brightness),
            Cell::decimal(self.sharpness),
            Cell::Text(&self.phash),
            Cell::integer(self.faces),
            Cell::Text(&self.face_boxes),
            Cell::Text(&self.caption),
            Cell::Text(&self.tags),
        ];
        let colour = |i: usize| self.colours.get(i);
        cells.extend(
            (0..DOMINANT_COLOURS).map(|i| colour(i).map_or(Cell::Empty, |c| Cell::Text(&c.colour))),
        );
        cells.extend((0..DOMINANT_COLOURS).map(|i| Cell::decimal(colour(i).and_then(|c| c.share))));
        cells.push(Cell::Text(&self.exif));
        cells.push(Cell::Text(&self.error));
        cells
    }
}

/// A JSON value as table text: strings without their quotes, `null` as nothing.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// One cell of a row, typed so that each format writes it its own way.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Empty,
    Text(&'a str),
    Integer(u64),
    Decimal(f64),
    Boolean(bool),
}

impl Cell<'_> {
    fn integer(value: Option<u64>) -> Self {
        value.map_or(Cell::Empty, Cell::Integer)
    }

    fn decimal(value: Option<f64>) -> Self {
        value.map_or(Cell::Empty, Cell::Decimal)
    }

    fn boolean(value: Option<bool>) -> Self {
        value.map_or(Cell::Empty, Cell::Boolean)
    }
}

/// The formats a job's analysis exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One row per image and `analyze` report.
    Csv,
    /// Every image's reports whole (histograms too).
    Json,
    /// The CSV's table as a workbook.
    Xlsx,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }

    /// The format an extension names (`csv`, `json`, `xlsx`).
    pub fn from_extension(extension: &str) -> Option<Format> {
        [Format::Csv, Format::Json, Format::Xlsx]
            .into_iter()
            .find(|format| format.extension() == extension)
    }

    /// The export's file name: `<job id>-analysis.<extension>`.
    pub fn file_name(self, job_id: &str) -> String {
        format!("{job_id}-analysis.{}", self.extension())
    }
}

/// `job`'s analysis in `format`.
pub fn render(job: &Job, format: Format) -> Result<Vec<u8>, Error> {
    match format {
        Format::Csv => Ok(to_csv(job)),
        Format::Json => Ok(to_json(job)),
        Format::Xlsx => to_xlsx(job),
    }
}

/// The analysis as CSV: the [`COLUMNS`] header, then [`rows`], quoted per RFC 4180, ended with
/// `\r\n`, with text that a spreadsheet would run as a formula made plain text.
pub fn to_csv(job: &Job) -> Vec<u8> {
    let mut csv = COLUMNS.join(",");
    csv.push_str("\r\n");
    for row in rows(job) {
        push_csv_cells(&mut csv, &row);
        csv.push_str("\r\n");
    }
    csv.into_bytes()
}

/// The batch table's header: the job and the image's URL, then [`COLUMNS`].
pub fn batch_csv_header() -> Vec<u8> {
    format!("job,url,{}\r\n", COLUMNS.join(",")).into_bytes()
}

/// One job's rows of its batch's table (see [`batch_csv_header`]): a batch's export is
/// written a job at a time, so it never holds more than one job's rows.
pub fn batch_csv_rows(job: &Job) -> Vec<u8> {
    let id = job.summary.as_ref().map_or("", |summary| &summary.id);
    let mut csv = String::new();
    for row in rows(job) {
        csv.push_str(id);
        csv.push(',');
        csv.push_str(&csv_field(&row.url));
        csv.push(',');
        push_csv_cells(&mut csv, &row);
        csv.push_str("\r\n");
    }
    csv.into_bytes()
}

fn push_csv_cells(csv: &mut String, row: &AnalysisRow) {
    let fields: Vec<Cow<'_, str>> = row
        .cells()
        .into_iter()
        .map(|cell| match cell {
            Cell::Empty => Cow::Borrowed(""),
            Cell::Text(text) => csv_field(text),
            Cell::Integer(value) => Cow::Owned(value.to_string()),
            Cell::Decimal(value) => Cow::Owned(value.to_string()),
            Cell::Boolean(value) => Cow::Borrowed(if value { "true" } else { "false" }),
        })
        .collect();
    csv.push_str(&fields.join(","));
}

/// The JSON export: a job's analysis reports, grouped by image.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AnalysisExport)]
pub(crate) struct JobJson<'a> {
    /// The job id.
    job: &'a str,
    images: Vec<ImageJson<'a>>,
}

/// One image's reports in the JSON export.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AnalysisImage)]
struct ImageJson<'a> {
    index: u32,
    name: &'a str,
    #[schema(value_type = crate::http::ImageStateLabel)]
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// Each `analyze` op's report whole, in pipeline order, as the worker wrote it.
    #[schema(value_type = Vec<Object>)]
    reports: Vec<Value>,
}

/// The analysis as JSON: `{"job": id, "images": [{"index", "name", "state", "error"?,
/// "reports": [...]}]}`, each report whole as the worker wrote it, histogram included.
pub fn to_json(job: &Job) -> Vec<u8> {
    let export = JobJson {
        job: job
            .summary
            .as_ref()
            .map_or("", |summary| summary.id.as_str()),
        images: job
            .images
            .iter()
            .map(|image| ImageJson {
                index: image.index,
                name: &image.name,
                state: image.state().label(),
                error: (!image.error.is_empty()).then_some(image.error.as_str()),
                reports: reports(image)
                    .iter()
                    // As the job view does: a report that is not JSON is passed on as a string.
                    .map(|report| {
                        serde_json::from_str(report)
                            .unwrap_or_else(|_| Value::from(report.as_str()))
                    })
                    .collect(),
            })
            .collect(),
    };
    // Compact: pretty-printing puts each of a histogram's 256 numbers on a line of its own.
    let mut json = serde_json::to_vec(&export).expect("analysis export serialises to json");
    json.push(b'\n');
    json
}

/// The analysis as an XLSX workbook: one sheet, `analysis`, with a bold, frozen [`COLUMNS`]
/// header and then [`rows`]; numbers and booleans are typed cells, text is text.
pub fn to_xlsx(job: &Job) -> Result<Vec<u8>, Error> {
    workbook(&rows(job)).map_err(|err| Error::internal(format!("writing xlsx: {err}")))
}

/// Built whole in memory, like the other exports: a job's rows are bounded (see the module
/// docs), so the `constant_memory` feature's temp files would buy nothing.
fn workbook(rows: &[AnalysisRow]) -> Result<Vec<u8>, XlsxError> {
    let mut workbook = Workbook::new();
    // The library stamps the current time into docProps/core.xml; a fixed one (the ZIP epoch,
    // as its entries carry) makes the same analysis give the same bytes.
    let created = ExcelDateTime::from_ymd(1980, 1, 1)?;
    workbook.set_properties(&DocProperties::new().set_creation_datetime(&created));
    let sheet = workbook.add_worksheet();
    sheet.set_name("analysis")?;
    // The header stays in view while scrolling through a thousand images.
    sheet.set_freeze_panes(1, 0)?;
    let bold = XlsxFormat::new().set_bold();
    for (column, name) in (0..).zip(COLUMNS) {
        sheet.write_string_with_format(0, column, name, &bold)?;
    }
    for (number, row) in (1..).zip(rows) {
        for (column, cell) in (0..).zip(row.cells()) {
            match cell {
                // The library writes no cell for an empty string either.
                Cell::Empty => {}
                // A string cell is never a formula, so unlike CSV nothing needs defusing.
                Cell::Text(text) => {
                    sheet.write_string(number, column, excel_cut(text))?;
                }
                // Excel's numbers are doubles; sizes and indices are far below 2^53.
                Cell::Integer(value) => {
                    sheet.write_number(number, column, value as f64)?;
                }
                Cell::Decimal(value) => {
                    sheet.write_number(number, column, value)?;
                }
                Cell::Boolean(value) => {
                    sheet.write_boolean(number, column, value)?;
                }
            }
        }
    }
    workbook.save_to_buffer()
}

/// Excel refuses a cell text longer than this, in UTF-16 units (and so does the library).
const EXCEL_MAX_TEXT: usize = 32_767;

/// `text` cut to [`EXCEL_MAX_TEXT`], at a character boundary: a long EXIF summary or error
/// loses its tail rather than the whole export failing.
fn excel_cut(text: &str) -> &str {
    let mut units = 0;
    for (at, c) in text.char_indices() {
        units += c.len_utf16();
        if units > EXCEL_MAX_TEXT {
            return &text[..at];
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{Cursor, Read as _};

    use pixelmesh_proto::v1::{ImageState, JobSummary, Output};
    use serde_json::json;
    use zip::{CompressionMethod, ZipArchive};

    use super::*;

    fn histogram() -> Vec<u64> {
        (0..256).map(|i| i * 3 % 17).collect()
    }

    /// The first `analyze` report of image 0.
    fn first_report() -> Value {
        json!({
            "width": 64,
            "height": 48,
            "input": {
                "format": "jpeg",
                "width": 640,
                "height": 480,
                "colour_type": "rgb8",
                "colour_profile": "Adobe RGB (1998), converted to sRGB",
                "exif": {"Make": "Acme", "Model": "X, 1"},
            },
            "has_alpha": false,
            "transparent": false,
            "brightness": 123.45,
            "histogram": histogram(),
            "dominant_colours": [
                {"colour": "#ff0000", "share": 0.5},
                {"colour": "#00ff00", "share": 0.25},
                {"colour": "#0000ff", "share": 0.125},
            ],
            "sharpness": 17.5,
            "phash": "8f3c00ff12345678",
            "faces": [
                {"x": 10, "y": 12, "w": 30, "h": 30, "score": 9.5},
                {"x": 50, "y": 4, "w": 8, "h": 8, "score": 4.25},
            ],
        })
    }

    /// The second report of image 0, after a resize that added alpha.
    fn second_report() -> Value {
        json!({
            "width": 32,
            "height": 24,
            "input": {"format": "jpeg", "width": 640, "height": 480, "colour_type": "rgb8",
                      "exif": {}},
            "has_alpha": true,
            "transparent": true,
            "brightness": 99,
            "histogram": vec![0; 256],
            "dominant_colours": [{"colour": "#ffffff", "share": 1.0}],
            "sharpness": 0.0,
            "phash": "0000000000000000",
        })
    }

    const FAILURE: &str = "bad \"jpeg\" header, at byte 3\u{1}";

    fn image(index: u32, name: &str, state: ImageState) -> Image {
        let mut image = Image {
            index,
            name: name.to_owned(),
            ..Image::default()
        };
        image.set_state(state);
        image
    }

    /// Image 0 done with two reports, 1 failed, 2 done without an `analyze` op.
    fn job() -> Job {
        let output = |analysis: Vec<String>| Output {
            blob_id: "blob".to_owned(),
            content_type: "image/webp".to_owned(),
            width: 32,
            height: 24,
            size_bytes: 1000,
            analysis,
        };
        let mut done = image(0, "=cmd.png", ImageState::Done);
        done.output = Some(output(vec![
            first_report().to_string(),
            second_report().to_string(),
        ]));
        let mut failed = image(1, "a&b<c>.png", ImageState::Failed);
        failed.error = FAILURE.to_owned();
        let mut plain = image(2, "plain.png", ImageState::Done);
        plain.output = Some(output(Vec::new()));
        Job {
            summary: Some(JobSummary {
                id: "job-1".to_owned(),
                ..JobSummary::default()
            }),
            images: vec![done, failed, plain],
            ..Job::default()
        }
    }

    #[test]
    fn rows_hold_one_line_per_report_and_per_image_without_one() {
        let rows = rows(&job());
        assert_eq!(rows.len(), 4);
        let first = &rows[0];
        assert_eq!((first.index, first.name.as_str()), (0, "=cmd.png"));
        assert_eq!((first.state.as_str(), first.report), ("done", Some(0)));
        assert_eq!((first.width, first.height), (Some(64), Some(48)));
        assert_eq!(
            (first.input_width, first.input_height),
            (Some(640), Some(480))
        );
        assert_eq!(
            (first.input_format.as_str(), first.colour_type.as_str()),
            ("jpeg", "rgb8")
        );
        assert_eq!(first.colour_profile, "Adobe RGB (1998), converted to sRGB");
        assert_eq!(rows[1].colour_profile, "");
        assert_eq!(
            (first.has_alpha, first.transparent),
            (Some(false), Some(false))
        );
        assert_eq!(
            (first.brightness, first.sharpness),
            (Some(123.45), Some(17.5))
        );
        assert_eq!(first.phash, "8f3c00ff12345678");
        assert_eq!(first.exif, "Make=Acme; Model=X, 1");
        assert_eq!(first.colours.len(), 3);
        assert_eq!(
            first.colours[2],
            DominantColour {
                colour: "#0000ff".to_owned(),
                share: Some(0.125)
            }
        );

        let second = &rows[1];
        assert_eq!((second.index, second.report), (0, Some(1)));
        assert_eq!(
            (second.has_alpha, second.transparent),
            (Some(true), Some(true))
        );
        assert_eq!(second.brightness, Some(99.0));
        assert_eq!(second.exif, "");

        let failed = &rows[2];
        assert_eq!(failed.report, None);
        assert_eq!(
            (failed.state.as_str(), failed.error.as_str()),
            ("failed", FAILURE)
        );
        assert_eq!((failed.width, failed.brightness), (None, None));
        assert!(failed.colours.is_empty());

        assert_eq!(
            rows[3],
            AnalysisRow {
                index: 2,
                name: "plain.png".to_owned(),
                state: "done".to_owned(),
                ..AnalysisRow::default()
            }
        );
        for row in &rows {
            assert_eq!(row.cells().len(), COLUMNS.len(), "row {}", row.index);
        }
    }

    #[test]
    fn describe_reports_fill_the_caption_and_tags() {
        let mut job = job();
        job.images.truncate(1);
        let output = job.images[0].output.as_mut().expect("output");
        output.analysis = vec![
            json!({"op": "describe", "width": 512, "height": 384,
                   "caption": "=A kite, over a beach.", "tags": ["kite", "beach"],
                   "model": "m", "cached": false})
            .to_string(),
        ];
        let rows = rows(&job);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].caption.as_str(), rows[0].tags.as_str()),
            ("=A kite, over a beach.", "kite; beach")
        );
        assert_eq!((rows[0].width, rows[0].faces), (Some(512), None));
        let csv = String::from_utf8(to_csv(&job)).expect("utf-8");
        // Defused and quoted like any text cell.
        assert!(
            csv.contains(",512,384,") && csv.contains(",\"'=A kite, over a beach.\",kite; beach,"),
            "{csv}"
        );
    }

    #[test]
    fn an_unreadable_report_still_makes_a_row_that_says_so() {
        let mut job = job();
        job.images.truncate(1);
        let output = job.images[0].output.as_mut().expect("output");
        output.analysis = vec!["not json".to_owned(), "[1]".to_owned()];
        let rows = rows(&job);
        assert_eq!(rows.len(), 2);
        for (position, row) in rows.iter().enumerate() {
            assert_eq!(row.report, Some(position));
            assert_eq!(row.error, "unreadable analysis report");
            assert_eq!(row.width, None);
        }
        // The JSON passes such reports on as they are.
        let json: Value = serde_json::from_slice(&to_json(&job)).expect("valid json");
        assert_eq!(json["images"][0]["reports"], json!(["not json", [1]]));
    }

    #[test]
    fn csv_has_the_header_and_quoted_defused_rows() {
        let csv = String::from_utf8(to_csv(&job())).expect("utf-8");
        let header = "index,name,state,report,width,height,input_format,input_width,\
            input_height,colour_type,colour_profile,has_alpha,transparent,brightness,sharpness,\
            phash,faces,face_boxes,caption,tags,colour_1,colour_2,colour_3,colour_4,colour_5,share_1,\
            share_2,share_3,share_4,share_5,exif,error";
        let expected = [
            header.to_owned(),
            "0,'=cmd.png,done,0,64,48,jpeg,640,480,rgb8,\"Adobe RGB (1998), converted to sRGB\",\
             false,false,123.45,17.5,\
             8f3c00ff12345678,2,\"10,12,30,30; 50,4,8,8\",,,#ff0000,#00ff00,#0000ff,,,0.5,0.25,\
             0.125,,,\
             \"Make=Acme; Model=X, 1\","
                .to_owned(),
            "0,'=cmd.png,done,1,32,24,jpeg,640,480,rgb8,,true,true,99,0,0000000000000000,,,,,\
             #ffffff,,,,,1,,,,,,"
                .to_owned(),
            format!(
                "1,a&b<c>.png,failed{}\"bad \"\"jpeg\"\" header, at byte 3\u{1}\"",
                ",".repeat(29)
            ),
            format!("2,plain.png,done{}", ",".repeat(29)),
        ];
        let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
        assert_eq!(lines, expected);
        assert!(csv.ends_with("\r\n"));
        assert!(!csv.replace("\r\n", "").contains('\n'));
        assert_eq!(header.split(',').collect::<Vec<_>>(), COLUMNS);
    }

    #[test]
    fn a_batch_table_leads_each_row_with_its_job_and_url_after_one_header() {
        let mut job = job();
        job.images[1].url = "https://example.com/=a,b.png".to_owned();
        let head = String::from_utf8(batch_csv_header()).expect("utf-8");
        assert_eq!(head, format!("job,url,{}\r\n", COLUMNS.join(",")));
        let rows = String::from_utf8(batch_csv_rows(&job)).expect("utf-8");
        let table = String::from_utf8(to_csv(&job)).expect("utf-8");
        // The job's own table's rows, each led by the job and its URL (quoted: it has a comma).
        let expected: Vec<String> = table
            .split_terminator("\r\n")
            .skip(1)
            .zip(["", "", "\"https://example.com/=a,b.png\"", ""])
            .map(|(row, url)| format!("job-1,{url},{row}"))
            .collect();
        assert_eq!(rows.split_terminator("\r\n").collect::<Vec<_>>(), expected);
    }

    #[test]
    fn json_holds_the_reports_whole() {
        let json: Value = serde_json::from_slice(&to_json(&job())).expect("valid json");
        assert_eq!(json["job"], "job-1");
        let images = json["images"].as_array().expect("images");
        assert_eq!(images.len(), 3);

        let done = &images[0];
        assert_eq!(done["index"], 0);
        assert_eq!(done["name"], "=cmd.png");
        assert_eq!(done["state"], "done");
        assert!(done.get("error").is_none(), "error on a done image");
        assert_eq!(done["reports"], json!([first_report(), second_report()]));
        assert_eq!(done["reports"][0]["histogram"], json!(histogram()));
        assert_eq!(
            done["reports"][0]["histogram"].as_array().map(Vec::len),
            Some(256)
        );

        assert_eq!(images[1]["state"], "failed");
        assert_eq!(images[1]["error"], FAILURE);
        assert_eq!(images[1]["reports"], json!([]));
        assert_eq!(images[2]["reports"], json!([]));
        assert!(images[2].get("error").is_none());

        let empty: Value = serde_json::from_slice(&to_json(&Job::default())).expect("json");
        assert_eq!(empty, json!({"job": "", "images": []}));
    }

    /// The parts of an XLSX by name, after checking each is deflated UTF-8.
    fn unpack(xlsx: Vec<u8>) -> BTreeMap<String, String> {
        let mut archive = ZipArchive::new(Cursor::new(xlsx)).expect("xlsx is a zip");
        let mut parts = BTreeMap::new();
        for index in 0..archive.len() {
            let mut file = archive.by_index(index).expect("entry");
            let name = file.name().expect("name").into_owned();
            assert_eq!(file.compression(), CompressionMethod::Deflated, "{name}");
            let mut xml = String::new();
            file.read_to_string(&mut xml).expect("utf-8 entry");
            parts.insert(name, xml);
        }
        parts
    }

    fn part<'a>(parts: &'a BTreeMap<String, String>, name: &str) -> &'a str {
        parts.get(name).unwrap_or_else(|| panic!("no part {name}"))
    }

    const SHEET_PART: &str = "xl/worksheets/sheet1.xml";

    /// A cell as a spreadsheet reads it back.
    #[derive(Debug, Clone, PartialEq)]
    enum Read {
        Text(String),
        Number(f64),
        Boolean(bool),
    }

    /// A cell read back: its value and its style index (`s`, 0 when absent).
    #[derive(Debug, Clone, PartialEq)]
    struct ReadCell {
        value: Read,
        style: u32,
    }

    /// The sheet's cells by reference (`A1`), with shared strings resolved and both XML's and
    /// Excel's (`_xHHHH_`) escapes undone, as Excel would read them.
    fn read_sheet(parts: &BTreeMap<String, String>) -> BTreeMap<String, ReadCell> {
        let strings: Vec<String> = parts
            .get("xl/sharedStrings.xml")
            .map(|xml| {
                xml.split("<si>")
                    .skip(1)
                    .map(|si| text_of(si, "t"))
                    .collect()
            })
            .unwrap_or_default();
        let sheet = part(parts, SHEET_PART);
        let mut cells = BTreeMap::new();
        for tail in sheet.split("<c ").skip(1) {
            let end = tail.find('>').expect("cell tag ends");
            let tag = &tail[..end];
            assert!(!tag.ends_with('/'), "a blank cell: <c {tag}>");
            // Only this cell's content, so a lookup cannot run on into the next cell.
            let content = &tail[end + 1..tail.find("</c>").expect("cell closed")];
            let attribute = |key: &str| {
                let at = tag.find(&format!(" {key}=\""))? + key.len() + 3;
                Some(&tag[at..at + tag[at..].find('"')?])
            };
            let reference = tag
                .strip_prefix("r=\"")
                .and_then(|r| r.split('"').next())
                .expect("cell reference first");
            let raw = || text_of(content, "v");
            let value = match attribute("t") {
                Some("s") => Read::Text(strings[raw().parse::<usize>().expect("index")].clone()),
                Some("inlineStr") => Read::Text(text_of(content, "t")),
                Some("b") => Read::Boolean(raw() == "1"),
                None => Read::Number(raw().parse().expect("number")),
                Some(other) => panic!("cell {reference}: type {other}"),
            };
            let style = attribute("s").map_or(0, |s| s.parse().expect("style"));
            let previous = cells.insert(reference.to_owned(), ReadCell { value, style });
            assert!(previous.is_none(), "cell {reference} twice");
        }
        cells
    }

    /// The text of the first `<element>` in `xml`, unescaped.
    fn text_of(xml: &str, element: &str) -> String {
        let open = xml
            .find(&format!("<{element}>"))
            .or_else(|| xml.find(&format!("<{element} ")))
            .unwrap_or_else(|| panic!("no <{element}> in {xml:?}"));
        let start = open + xml[open..].find('>').expect("tag ends") + 1;
        let end = start + xml[start..].find(&format!("</{element}>")).expect("closed");
        let text = xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        excel_unescape(&text)
    }

    /// Excel's reading of `_xHHHH_` in cell text: the character U+HHHH.
    fn excel_unescape(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("_x") {
            out.push_str(&rest[..at]);
            let escape = rest
                .get(at + 2..at + 7)
                .filter(|tail| tail.ends_with('_'))
                .and_then(|tail| u32::from_str_radix(&tail[..4], 16).ok())
                .and_then(char::from_u32);
            match escape {
                Some(c) => {
                    out.push(c);
                    rest = &rest[at + 7..];
                }
                None => {
                    out.push_str("_x");
                    rest = &rest[at + 2..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn the_test_reader_undoes_excels_escapes() {
        assert_eq!(
            excel_unescape("a_x0001_b_x005F_x2000_c_x12_d_x"),
            "a\u{1}b_x2000_c_x12_d_x"
        );
        assert_eq!(
            text_of("<t xml:space=\"preserve\">a&amp;lt;b&lt;</t>", "t"),
            "a&lt;b<"
        );
    }

    fn text(text: &str) -> Read {
        Read::Text(text.to_owned())
    }

    #[test]
    fn xlsx_is_a_workbook_with_one_typed_sheet() {
        let parts = unpack(to_xlsx(&job()).expect("xlsx"));
        assert!(part(&parts, "xl/workbook.xml").contains(r#"<sheet name="analysis" sheetId="1""#));
        assert_eq!(
            parts
                .keys()
                .filter(|name| name.starts_with("xl/worksheets/"))
                .count(),
            1,
            "one sheet"
        );
        let sheet = part(&parts, SHEET_PART);
        assert!(sheet.contains(r#"<dimension ref="A1:AF5"/>"#));
        assert_eq!(sheet.matches("<row ").count(), 5);
        // The header stays in view.
        assert!(sheet.contains(
            r#"<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>"#
        ));

        let cells = read_sheet(&parts);
        // Header 32, then the non-empty cells: 16 + 2 faces + 6 colours + exif, 15 + 2
        // colours, index/name/state/error, index/name/state.
        assert_eq!(cells.len(), 32 + 25 + 17 + 4 + 3);
        let value = |at: &str| {
            cells
                .get(at)
                .map(|cell| cell.value.clone())
                .unwrap_or_else(|| panic!("no cell {at}"))
        };
        let header: Vec<Read> = (0..COLUMNS.len())
            .map(|column| value(&format!("{}1", column_name(column))))
            .collect();
        assert_eq!(header, COLUMNS.map(text));
        // One bold style for the header, none for the data.
        let header_style = cells["A1"].style;
        assert_ne!(header_style, 0);
        for (at, cell) in &cells {
            let in_header = at.ends_with('1') && !at[..at.len() - 1].ends_with(char::is_numeric);
            assert_eq!(
                cell.style,
                if in_header { header_style } else { 0 },
                "style of {at}"
            );
        }
        assert!(
            part(&parts, "xl/styles.xml").contains("<b/>"),
            "no bold font"
        );

        for (at, expected) in [
            ("A2", Read::Number(0.0)),
            // Not defused: a string cell is never a formula.
            ("B2", text("=cmd.png")),
            ("C2", text("done")),
            ("D2", Read::Number(0.0)),
            ("E2", Read::Number(64.0)),
            ("H2", Read::Number(640.0)),
            ("G2", text("jpeg")),
            ("K2", text("Adobe RGB (1998), converted to sRGB")),
            ("L2", Read::Boolean(false)),
            ("N2", Read::Number(123.45)),
            ("O2", Read::Number(17.5)),
            ("P2", text("8f3c00ff12345678")),
            ("Q2", Read::Number(2.0)),
            ("R2", text("10,12,30,30; 50,4,8,8")),
            ("W2", text("#0000ff")),
            ("AB2", Read::Number(0.125)),
            ("AE2", text("Make=Acme; Model=X, 1")),
            ("D3", Read::Number(1.0)),
            ("M3", Read::Boolean(true)),
            ("N3", Read::Number(99.0)),
            ("B4", text("a&b<c>.png")),
            ("C4", text("failed")),
            // The control character survives, in Excel's own escape.
            ("AF4", text(FAILURE)),
            ("A5", Read::Number(2.0)),
        ] {
            assert_eq!(value(at), expected, "cell {at}");
        }
        for absent in ["AC2", "K3", "Q3", "R3", "S2", "AE3", "D4", "E4", "AF5"] {
            assert!(!cells.contains_key(absent), "cell {absent} written");
        }
    }

    /// The spreadsheet name of 0-based `column` below 702: A..Z, AA..ZZ.
    fn column_name(column: usize) -> String {
        let letter = |n: usize| char::from(b'A' + n as u8);
        match column {
            0..26 => letter(column).to_string(),
            _ => format!("{}{}", letter(column / 26 - 1), letter(column % 26)),
        }
    }

    #[test]
    fn xlsx_is_the_same_bytes_for_the_same_job() {
        let xlsx = to_xlsx(&job()).expect("xlsx");
        // Apart in time: the creation stamp has one-second resolution.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(
            to_xlsx(&job()).expect("xlsx") == xlsx,
            "same job, other bytes"
        );
        let core = unpack(xlsx)
            .remove("docProps/core.xml")
            .expect("core properties");
        for element in ["created", "modified"] {
            let stamp = format!(
                r#"<dcterms:{element} xsi:type="dcterms:W3CDTF">1980-01-01T00:00:00Z</dcterms:{element}>"#
            );
            assert!(core.contains(&stamp), "no fixed {element} in {core}");
        }
    }

    #[test]
    fn xlsx_of_a_job_without_images_has_the_header_only() {
        let parts = unpack(to_xlsx(&Job::default()).expect("xlsx"));
        assert!(part(&parts, SHEET_PART).contains(r#"<dimension ref="A1:AF1"/>"#));
        assert_eq!(part(&parts, SHEET_PART).matches("<row ").count(), 1);
        let cells = read_sheet(&parts);
        assert_eq!(cells.len(), COLUMNS.len());
        assert!(cells.keys().all(|at| at.ends_with('1') && at.len() <= 3));
    }

    #[test]
    fn xlsx_text_reads_back_as_written_and_fits_a_cell() {
        let mut job = job();
        job.images.truncate(2);
        job.images[0].output = None;
        job.images[0].name = "IMG_x2000_.jpg\r\n\ttab".to_owned();
        // Longer than a cell holds: cut, not an export that fails.
        job.images[1].error = "é".repeat(EXCEL_MAX_TEXT + 5);
        let cells = read_sheet(&unpack(to_xlsx(&job).expect("xlsx")));
        assert_eq!(cells["B2"].value, text("IMG_x2000_.jpg\r\n\ttab"));
        assert_eq!(cells["AF3"].value, text(&"é".repeat(EXCEL_MAX_TEXT)));
    }

    #[test]
    fn excel_cut_counts_utf16_units() {
        assert_eq!(excel_cut("short"), "short");
        let long = "é".repeat(EXCEL_MAX_TEXT + 5);
        assert_eq!(excel_cut(&long).chars().count(), EXCEL_MAX_TEXT);
        // Outside the BMP a character takes two UTF-16 units.
        let wide = "😀".repeat(EXCEL_MAX_TEXT);
        assert_eq!(excel_cut(&wide).chars().count(), EXCEL_MAX_TEXT / 2);
    }
}
