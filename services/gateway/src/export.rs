//! A job's analysis reports as a download: `GET /api/v1/jobs/{id}/analysis.{csv,json,xlsx}`.
//!
//! * [`rows`] — one [`AnalysisRow`] per image per `analyze` report, and one row for an image
//!   without a report, so failed images show up in the export too;
//! * [`to_csv`] — those rows as RFC 4180 CSV, formula-defused like the bundle's manifest;
//! * [`to_xlsx`] — the same rows as an Office Open XML workbook with one sheet, `analysis`;
//! * [`to_json`] — the reports whole, grouped by image.
//!
//! The tables leave the 256-bin histogram out: 256 columns would bury everything else, and a
//! chart of it wants the JSON anyway. A job has at most a thousand images, so every export is
//! built whole in memory.

use std::borrow::Cow;
use std::io::{Cursor, Write as _};

use pixelmesh_filter::ops::analyze::DOMINANT_COLOURS;
use pixelmesh_proto::Error;
use pixelmesh_proto::v1::{Image, Job};
use serde::Serialize;
use serde_json::Value;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::bundle::csv_field;

/// The tables' header, in column order; [`AnalysisRow`]'s cells follow it.
pub const COLUMNS: [&str; 27] = [
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
    "has_alpha",
    "transparent",
    "brightness",
    "sharpness",
    "phash",
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
    pub state: String,
    /// The report's position among the pipeline's `analyze` ops; `None` without a report.
    pub report: Option<usize>,
    /// The image's size where the `analyze` op ran.
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub input_format: String,
    pub input_width: Option<u64>,
    pub input_height: Option<u64>,
    pub colour_type: String,
    pub has_alpha: Option<bool>,
    pub transparent: Option<bool>,
    pub brightness: Option<f64>,
    pub sharpness: Option<f64>,
    pub phash: String,
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
    /// Copies the measurements of `report` (a JSON object, see the filter's `analyze` op).
    fn measure(&mut self, report: &Value) {
        // Indexing a missing key gives `null`, so a field the report lacks stays empty.
        let input = &report["input"];
        self.width = report["width"].as_u64();
        self.height = report["height"].as_u64();
        self.input_format = text(&input["format"]);
        self.input_width = input["width"].as_u64();
        self.input_height = input["height"].as_u64();
        self.colour_type = text(&input["colour_type"]);
        self.has_alpha = report["has_alpha"].as_bool();
        self.transparent = report["transparent"].as_bool();
        self.brightness = report["brightness"].as_f64();
        self.sharpness = report["sharpness"].as_f64();
        self.phash = text(&report["phash"]);
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
            Cell::boolean(self.has_alpha),
            Cell::boolean(self.transparent),
            Cell::decimal(self.brightness),
            Cell::decimal(self.sharpness),
            Cell::Text(&self.phash),
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
        csv.push_str("\r\n");
    }
    csv.into_bytes()
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

const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#;

const SHEET_PART: &str = "xl/worksheets/sheet1.xml";

const CONTENT_TYPES: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">"#,
    r#"<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>"#,
    r#"<Default Extension="xml" ContentType="application/xml"/>"#,
    r#"<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>"#,
    r#"<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#,
    r#"<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>"#,
    r#"</Types>"#,
);

const ROOT_RELATIONSHIPS: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#,
    r#"<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>"#,
    r#"</Relationships>"#,
);

const WORKBOOK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">"#,
    r#"<sheets><sheet name="analysis" sheetId="1" r:id="rId1"/></sheets>"#,
    r#"</workbook>"#,
);

const WORKBOOK_RELATIONSHIPS: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#,
    r#"<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>"#,
    r#"<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>"#,
    r#"</Relationships>"#,
);

/// Two cell formats: 0 the default, 1 bold for the header. Excel wants the fills, borders and
/// "Normal" style below even when nothing uses them, or it offers to repair the file.
const STYLES: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">"#,
    r#"<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>"#,
    r#"<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>"#,
    r#"<fills count="2"><fill><patternFill patternType="none"/></fill>"#,
    r#"<fill><patternFill patternType="gray125"/></fill></fills>"#,
    r#"<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>"#,
    r#"<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>"#,
    r#"<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>"#,
    r#"<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/></cellXfs>"#,
    r#"<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>"#,
    r#"</styleSheet>"#,
);

/// The analysis as an XLSX workbook: one sheet, `analysis`, with a bold, frozen [`COLUMNS`]
/// header and then [`rows`]; numbers and booleans are typed cells, text is inline strings (so
/// no shared-strings part is needed).
pub fn to_xlsx(job: &Job) -> Result<Vec<u8>, Error> {
    let sheet = sheet_xml(&rows(job));
    let parts = [
        // First, by convention: some readers sniff the type from the first entry.
        ("[Content_Types].xml", CONTENT_TYPES),
        ("_rels/.rels", ROOT_RELATIONSHIPS),
        ("xl/workbook.xml", WORKBOOK),
        ("xl/_rels/workbook.xml.rels", WORKBOOK_RELATIONSHIPS),
        ("xl/styles.xml", STYLES),
        (SHEET_PART, sheet.as_str()),
    ];
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        // A fixed time, as in the bundles: the same analysis gives the same bytes.
        .last_modified_time(DateTime::default());
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, xml) in parts {
        zip.start_file(name, options).map_err(xlsx_error)?;
        zip.write_all(xml.as_bytes())
            .map_err(|err| xlsx_error(err.into()))?;
    }
    Ok(zip.finish().map_err(xlsx_error)?.into_inner())
}

fn xlsx_error(err: zip::result::ZipError) -> Error {
    Error::internal(format!("writing xlsx: {err}"))
}

/// `xl/worksheets/sheet1.xml`: the header row, then one row per [`AnalysisRow`].
fn sheet_xml(rows: &[AnalysisRow]) -> String {
    let last = format!("{}{}", column_name(COLUMNS.len() - 1), rows.len() + 1);
    let mut xml = String::with_capacity(2048 + rows.len() * 1024);
    xml.push_str(XML_DECLARATION);
    xml.push_str(
        r#"<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">"#,
    );
    xml.push_str(&format!(r#"<dimension ref="A1:{last}"/>"#));
    // The header stays in view while scrolling through a thousand images.
    xml.push_str(concat!(
        r#"<sheetViews><sheetView workbookViewId="0">"#,
        r#"<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>"#,
        r#"</sheetView></sheetViews>"#,
    ));
    xml.push_str("<sheetData>");
    push_row(&mut xml, 1, &COLUMNS.map(Cell::Text), r#" s="1""#);
    for (i, row) in rows.iter().enumerate() {
        push_row(&mut xml, i + 2, &row.cells(), "");
    }
    xml.push_str("</sheetData></worksheet>");
    xml
}

/// Appends row `number` (1-based) of `cells`, each with the attributes `style`. Empty cells
/// are left out, as spreadsheets write them.
fn push_row(xml: &mut String, number: usize, cells: &[Cell<'_>], style: &str) {
    xml.push_str(&format!(r#"<row r="{number}">"#));
    for (column, cell) in cells.iter().enumerate() {
        let at = format!("{}{number}", column_name(column));
        let cell = match *cell {
            Cell::Empty | Cell::Text("") => continue,
            // Inline strings are never formulas, so unlike CSV nothing needs defusing.
            Cell::Text(text) => format!(
                r#"<c r="{at}"{style} t="inlineStr"><is><t xml:space="preserve">{}</t></is></c>"#,
                xml_escape(&excel_escape(excel_cut(text)))
            ),
            Cell::Integer(value) => format!(r#"<c r="{at}"{style}><v>{value}</v></c>"#),
            // `Display` of an f64 never writes an exponent; JSON numbers are never NaN or infinite.
            Cell::Decimal(value) => format!(r#"<c r="{at}"{style}><v>{value}</v></c>"#),
            Cell::Boolean(value) => {
                format!(r#"<c r="{at}"{style} t="b"><v>{}</v></c>"#, u8::from(value))
            }
        };
        xml.push_str(&cell);
    }
    xml.push_str("</row>");
}

/// The spreadsheet name of 0-based `column`: A..Z, AA..AZ, BA, ...
fn column_name(column: usize) -> String {
    let mut letters = Vec::new();
    let mut rest = column;
    loop {
        letters.push(char::from(b'A' + (rest % 26) as u8));
        if rest < 26 {
            break;
        }
        rest = rest / 26 - 1;
    }
    letters.iter().rev().collect()
}

/// Excel refuses a workbook with a cell text longer than this, in UTF-16 units.
const EXCEL_MAX_TEXT: usize = 32_767;

/// `text` cut to [`EXCEL_MAX_TEXT`], at a character boundary.
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

/// Excel reads `_xHHHH_` in cell text as the character U+HHHH; escaping the underscore as
/// `_x005F_` keeps a name like `IMG_x2000_.jpg` as written.
fn excel_escape(text: &str) -> Cow<'_, str> {
    if !text.contains("_x") {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 12);
    let mut rest = text;
    while let Some(at) = rest.find("_x") {
        let tail = &rest.as_bytes()[at..];
        let is_escape =
            tail.len() >= 7 && tail[2..6].iter().all(u8::is_ascii_hexdigit) && tail[6] == b'_';
        escaped.push_str(&rest[..at]);
        if is_escape {
            escaped.push_str("_x005F");
        }
        escaped.push('_');
        rest = &rest[at + 1..];
    }
    escaped.push_str(rest);
    Cow::Owned(escaped)
}

/// `text` escaped for XML text and attribute values, without the characters XML 1.0 cannot
/// hold at all (control characters other than tab, line feed and carriage return).
fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            // A raw CR would read back as LF: XML parsers normalise line ends.
            '\r' => escaped.push_str("&#13;"),
            '\t' | '\n' => escaped.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use pixelmesh_proto::v1::{ImageState, JobSummary, Output};
    use serde_json::json;
    use zip::ZipArchive;

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
            input_height,colour_type,has_alpha,transparent,brightness,sharpness,phash,\
            colour_1,colour_2,colour_3,colour_4,colour_5,share_1,share_2,share_3,share_4,\
            share_5,exif,error";
        let expected = [
            header.to_owned(),
            "0,'=cmd.png,done,0,64,48,jpeg,640,480,rgb8,false,false,123.45,17.5,\
             8f3c00ff12345678,#ff0000,#00ff00,#0000ff,,,0.5,0.25,0.125,,,\
             \"Make=Acme; Model=X, 1\","
                .to_owned(),
            "0,'=cmd.png,done,1,32,24,jpeg,640,480,rgb8,true,true,99,0,0000000000000000,\
             #ffffff,,,,,1,,,,,,"
                .to_owned(),
            format!(
                "1,a&b<c>.png,failed{}\"bad \"\"jpeg\"\" header, at byte 3\u{1}\"",
                ",".repeat(24)
            ),
            format!("2,plain.png,done{}", ",".repeat(24)),
        ];
        let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
        assert_eq!(lines, expected);
        assert!(csv.ends_with("\r\n"));
        assert!(!csv.replace("\r\n", "").contains('\n'));
        assert_eq!(header.split(',').collect::<Vec<_>>(), COLUMNS);
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

    const PARTS: [&str; 6] = [
        "[Content_Types].xml",
        "_rels/.rels",
        "xl/workbook.xml",
        "xl/_rels/workbook.xml.rels",
        "xl/styles.xml",
        "xl/worksheets/sheet1.xml",
    ];

    /// The parts of an XLSX, each by name, after checking they are deflated XML.
    fn unpack(xlsx: Vec<u8>) -> Vec<(String, String)> {
        let mut archive = ZipArchive::new(Cursor::new(xlsx)).expect("xlsx is a zip");
        let mut parts = Vec::new();
        for index in 0..archive.len() {
            let mut file = archive.by_index(index).expect("entry");
            let name = file.name().expect("name").into_owned();
            assert_eq!(file.compression(), CompressionMethod::Deflated, "{name}");
            let mut xml = String::new();
            file.read_to_string(&mut xml).expect("utf-8 entry");
            parts.push((name, xml));
        }
        parts
    }

    fn part<'a>(parts: &'a [(String, String)], name: &str) -> &'a str {
        parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, xml)| xml.as_str())
            .unwrap_or_else(|| panic!("no part {name}"))
    }

    /// Checks what a parser would choke on: the declaration, one root, tags that nest and
    /// close, entities only where `&` appears, and no characters XML 1.0 forbids.
    fn assert_well_formed(name: &str, xml: &str) {
        let mut rest = xml
            .strip_prefix(XML_DECLARATION)
            .unwrap_or_else(|| panic!("{name}: no declaration"));
        let mut open: Vec<&str> = Vec::new();
        let mut roots = 0;
        while let Some(start) = rest.find('<') {
            assert_text(name, &rest[..start]);
            assert!(
                start == 0 || !open.is_empty(),
                "{name}: text outside the root"
            );
            let end = start + rest[start..].find('>').expect("tag ends");
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "{name}: `<` inside {tag:?}");
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(closing), "{name}: closing tag");
            } else {
                if open.is_empty() {
                    roots += 1;
                }
                let element = tag.split([' ', '/']).next().expect("element name");
                assert!(!element.is_empty(), "{name}: tag {tag:?}");
                assert_text(name, &tag[element.len()..]);
                if !tag.ends_with('/') {
                    open.push(element);
                }
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "{name}: unclosed {open:?}");
        assert_eq!(roots, 1, "{name}: roots");
        assert!(rest.is_empty(), "{name}: trailing {rest:?}");
    }

    fn assert_text(name: &str, text: &str) {
        assert!(
            !text
                .chars()
                .any(|c| c < ' ' && !matches!(c, '\t' | '\n' | '\r')),
            "{name}: control character in {text:?}"
        );
        for (at, _) in text.match_indices('&') {
            let entity = &text[at + 1..text[at..].find(';').map_or(text.len(), |end| at + end)];
            let known = matches!(entity, "amp" | "lt" | "gt" | "quot" | "apos")
                || entity
                    .strip_prefix('#')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            assert!(known, "{name}: bare `&` in {text:?}");
        }
    }

    #[test]
    #[should_panic(expected = "bare `&`")]
    fn the_xml_check_catches_a_bare_ampersand() {
        assert_well_formed("test", &format!("{XML_DECLARATION}<a><b>x & y</b></a>"));
    }

    #[test]
    #[should_panic(expected = "closing tag")]
    fn the_xml_check_catches_crossed_tags() {
        assert_well_formed("test", &format!("{XML_DECLARATION}<a><b></a></b>"));
    }

    #[test]
    fn xlsx_is_a_workbook_with_one_typed_sheet() {
        let xlsx = to_xlsx(&job()).expect("xlsx");
        assert_eq!(
            to_xlsx(&job()).expect("xlsx"),
            xlsx,
            "same job, other bytes"
        );
        let parts = unpack(xlsx);
        let names: Vec<&str> = parts.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, PARTS);
        for (name, xml) in &parts {
            assert_well_formed(name, xml);
        }

        let types = part(&parts, "[Content_Types].xml");
        assert!(types.contains(
            r#"<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#
        ));
        assert!(types.contains(r#"PartName="/xl/workbook.xml""#));
        assert!(
            part(&parts, "xl/workbook.xml")
                .contains(r#"<sheet name="analysis" sheetId="1" r:id="rId1"/>"#)
        );
        assert!(
            part(&parts, "xl/_rels/workbook.xml.rels")
                .contains(r#"Target="worksheets/sheet1.xml""#)
        );

        let sheet = part(&parts, SHEET_PART);
        assert!(sheet.contains(r#"<dimension ref="A1:AA5"/>"#));
        assert_eq!(sheet.matches("<row ").count(), 5);
        // Header 27, then the non-empty cells: 15 + 6 colours + exif, 15 + 2 colours,
        // index/name/state/error, index/name/state.
        assert_eq!(sheet.matches("<c ").count(), 27 + 22 + 17 + 4 + 3);
        for cell in [
            r#"<c r="A1" s="1" t="inlineStr"><is><t xml:space="preserve">index</t></is></c>"#,
            r#"<c r="AA1" s="1" t="inlineStr"><is><t xml:space="preserve">error</t></is></c>"#,
            r#"<c r="E2"><v>64</v></c>"#,
            r#"<c r="M2"><v>123.45</v></c>"#,
            r#"<c r="W2"><v>0.125</v></c>"#,
            r#"<c r="K2" t="b"><v>0</v></c>"#,
            r#"<c r="L3" t="b"><v>1</v></c>"#,
            r#"<c r="D3"><v>1</v></c>"#,
            // Not defused: an inline string is never a formula.
            r#"<c r="B2" t="inlineStr"><is><t xml:space="preserve">=cmd.png</t></is></c>"#,
            r#"<c r="B4" t="inlineStr"><is><t xml:space="preserve">a&amp;b&lt;c&gt;.png</t></is></c>"#,
            // The control character is dropped.
            r#"<c r="AA4" t="inlineStr"><is><t xml:space="preserve">bad &quot;jpeg&quot; header, at byte 3</t></is></c>"#,
        ] {
            assert!(sheet.contains(cell), "no {cell}");
        }
        assert!(!sheet.contains(r#"<c r="X2""#), "empty share_4 written");
        assert!(
            !sheet.contains(r#"<c r="D4""#),
            "report cell for an image without one"
        );
    }

    #[test]
    fn xlsx_of_a_job_without_images_has_the_header_only() {
        let parts = unpack(to_xlsx(&Job::default()).expect("xlsx"));
        let sheet = part(&parts, SHEET_PART);
        assert_well_formed(SHEET_PART, sheet);
        assert!(sheet.contains(r#"<dimension ref="A1:AA1"/>"#));
        assert_eq!(sheet.matches("<row ").count(), 1);
        assert_eq!(sheet.matches("<c ").count(), COLUMNS.len());
    }

    #[test]
    fn xml_escape_leaves_no_markup_and_no_forbidden_characters() {
        assert_eq!(
            xml_escape("a&b<c>\"d'\te\nf\rg\u{0}\u{1b}\u{fffe}h\u{7f}é😀"),
            "a&amp;b&lt;c&gt;&quot;d'\te\nf&#13;gh\u{7f}é😀"
        );
        assert_eq!(xml_escape(""), "");
    }

    #[test]
    fn excel_text_keeps_underscore_escapes_literal_and_fits_a_cell() {
        assert_eq!(excel_escape("IMG_x2000_.jpg"), "IMG_x005F_x2000_.jpg");
        assert_eq!(excel_escape("a_x00e9__x12_b_x"), "a_x005F_x00e9__x12_b_x");
        assert_eq!(excel_escape("_x_x0041_"), "_x_x005F_x0041_");
        assert_eq!(excel_escape("plain_name"), "plain_name");
        assert_eq!(excel_cut("short"), "short");
        let long = "é".repeat(EXCEL_MAX_TEXT + 5);
        assert_eq!(excel_cut(&long).chars().count(), EXCEL_MAX_TEXT);
        // Outside the BMP a character takes two UTF-16 units.
        let wide = "😀".repeat(EXCEL_MAX_TEXT);
        assert_eq!(excel_cut(&wide).chars().count(), EXCEL_MAX_TEXT / 2);
    }

    #[test]
    fn column_names_run_like_a_spreadsheet() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702, 16_383]
            .into_iter()
            .map(column_name)
            .collect();
        assert_eq!(
            names,
            ["A", "B", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA", "XFD"]
        );
    }
}
