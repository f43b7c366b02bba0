//! Streaming a ZIP of a job's outputs, never whole in memory: `GET /api/v1/jobs/{id}/outputs.zip`
//! writes each output as it reads the blob from storage.
//!
//! * [`ZipStreamWriter`] — a STORED-only ZIP writer that does no I/O: it returns each header as
//!   `Bytes` for the caller to send and only accounts the data the caller sends itself. Outputs
//!   are already-compressed images, so deflating them would cost CPU for nothing;
//! * [`manifest_json`] / [`manifest_csv`] — what happened to each image, put in the bundle;
//! * [`output_name`] — a safe, unique entry name for each output.

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use pixelmesh_proto::Error;
use serde::Serialize;

use crate::archive::{split_extension, unique_name};

const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR_SIGNATURE: u32 = 0x0807_4b50;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const ZIP64_END_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const END_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;

/// Bit 3: CRC and sizes follow the data in a data descriptor, as they are not known when the
/// local header goes out; bit 11: names are UTF-8.
const FLAGS: u16 = (1 << 3) | (1 << 11);
const VERSION: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// "Made by Unix", so extractors apply the permissions in [`EXTERNAL_ATTRIBUTES`].
const MADE_BY_UNIX: u16 = 3 << 8;
/// A regular file, `rw-r--r--`.
const EXTERNAL_ATTRIBUTES: u32 = 0o100_644 << 16;
/// 1980-01-01 00:00, the DOS epoch: an output has no meaningful time of its own, and a fixed
/// time makes bundles of the same outputs byte-identical.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;

/// Sizes and offsets at or above this need zip64 fields: `0xFFFFFFFF` marks "see zip64".
const ZIP64_BYTES: u64 = 0xFFFF_FFFF;
/// Entry counts at or above this need the zip64 end record: `0xFFFF` marks "see zip64".
const ZIP64_ENTRIES: u64 = 0xFFFF;

/// Writes a STORED ZIP as a stream of records. For each entry send the bytes of
/// [`start_entry`](Self::start_entry), the data (passing each chunk to [`data`](Self::data)),
/// then [`finish_entry`](Self::finish_entry); at the end send [`finish`](Self::finish).
///
/// ZIP64 records are used only where a size, offset or count needs them, so bundles over 4 GiB
/// work and small ones stay readable by any tool. An entry of 4 GiB or more gets a zip64 data
/// descriptor; readers that use the central directory (nearly all) read it.
#[derive(Debug)]
pub struct ZipStreamWriter {
    /// Bytes emitted so far, headers and data: the offset of whatever comes next.
    offset: u64,
    entries: Vec<Finished>,
    current: Option<Current>,
    /// Thresholds for zip64 fields; only tests lower them.
    zip64_bytes: u64,
    zip64_entries: u64,
}

#[derive(Debug)]
struct Current {
    name: String,
    offset: u64,
    crc: crc32fast::Hasher,
    size: u64,
}

/// What the central directory needs about a written entry.
#[derive(Debug)]
struct Finished {
    name: String,
    offset: u64,
    crc: u32,
    size: u64,
}

impl Default for ZipStreamWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ZipStreamWriter {
    pub fn new() -> Self {
        Self::with_zip64_thresholds(ZIP64_BYTES, ZIP64_ENTRIES)
    }

    /// A writer that switches to zip64 fields early, so tests reach those paths cheaply.
    fn with_zip64_thresholds(zip64_bytes: u64, zip64_entries: u64) -> Self {
        ZipStreamWriter {
            offset: 0,
            entries: Vec::new(),
            current: None,
            zip64_bytes,
            zip64_entries,
        }
    }

    /// Bytes emitted so far, which is the archive's size once [`finish`](Self::finish) is sent.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Starts an entry and returns its local header. Refuses empty names and names that could
    /// leave the extraction folder, so our own bundles never carry them.
    pub fn start_entry(&mut self, name: &str) -> Result<Bytes, Error> {
        if let Some(current) = &self.current {
            return Err(Error::internal(format!(
                "zip entry {:?} is still open",
                current.name
            )));
        }
        check_entry_name(name)?;

        let mut header = BytesMut::with_capacity(30 + name.len());
        header.put_u32_le(LOCAL_HEADER_SIGNATURE);
        header.put_u16_le(VERSION);
        header.put_u16_le(FLAGS);
        header.put_u16_le(0); // stored
        header.put_u16_le(DOS_TIME);
        header.put_u16_le(DOS_DATE);
        header.put_u32_le(0); // CRC, in the data descriptor
        header.put_u32_le(0); // compressed size, likewise
        header.put_u32_le(0); // uncompressed size, likewise
        header.put_u16_le(name.len() as u16);
        header.put_u16_le(0); // extra field length
        header.put_slice(name.as_bytes());

        self.current = Some(Current {
            name: name.to_owned(),
            offset: self.offset,
            crc: crc32fast::Hasher::new(),
            size: 0,
        });
        self.offset += header.len() as u64;
        Ok(header.freeze())
    }

    /// Accounts one chunk of the current entry's data (CRC and size); the caller sends `data`.
    pub fn data(&mut self, data: &[u8]) {
        debug_assert!(self.current.is_some(), "zip data outside an entry");
        if let Some(current) = &mut self.current {
            current.crc.update(data);
            current.size += data.len() as u64;
        }
        self.offset += data.len() as u64;
    }

    /// Ends the current entry and returns its data descriptor; empty if no entry is open.
    pub fn finish_entry(&mut self) -> Bytes {
        debug_assert!(self.current.is_some(), "no zip entry to finish");
        let Some(current) = self.current.take() else {
            return Bytes::new();
        };
        let crc = current.crc.finalize();
        let mut descriptor = BytesMut::with_capacity(24);
        descriptor.put_u32_le(DATA_DESCRIPTOR_SIGNATURE);
        descriptor.put_u32_le(crc);
        if current.size >= self.zip64_bytes {
            descriptor.put_u64_le(current.size); // compressed: stored, so the same
            descriptor.put_u64_le(current.size);
        } else {
            descriptor.put_u32_le(current.size as u32);
            descriptor.put_u32_le(current.size as u32);
        }
        self.offset += descriptor.len() as u64;
        self.entries.push(Finished {
            name: current.name,
            offset: current.offset,
            crc,
            size: current.size,
        });
        descriptor.freeze()
    }

    /// Returns the central directory and end records, after the data descriptor of an entry
    /// still open.
    pub fn finish(mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.current.is_some() {
            out.put(self.finish_entry());
        }
        let directory_start = self.offset;
        let before = out.len();
        for entry in &self.entries {
            self.put_central_header(&mut out, entry);
        }
        let directory_size = (out.len() - before) as u64;
        let directory_end = directory_start + directory_size;
        let count = self.entries.len() as u64;

        let big_count = count >= self.zip64_entries;
        let big_size = directory_size >= self.zip64_bytes;
        let big_start = directory_start >= self.zip64_bytes;
        if big_count || big_size || big_start {
            out.put_u32_le(ZIP64_END_SIGNATURE);
            out.put_u64_le(44); // size of the rest of this record
            out.put_u16_le(MADE_BY_UNIX | VERSION_ZIP64);
            out.put_u16_le(VERSION_ZIP64);
            out.put_u32_le(0); // this disk
            out.put_u32_le(0); // disk where the central directory starts
            out.put_u64_le(count); // entries on this disk
            out.put_u64_le(count);
            out.put_u64_le(directory_size);
            out.put_u64_le(directory_start);

            out.put_u32_le(ZIP64_LOCATOR_SIGNATURE);
            out.put_u32_le(0); // disk of the zip64 end record
            out.put_u64_le(directory_end);
            out.put_u32_le(1); // total disks
        }
        let count16 = if big_count { 0xFFFF } else { count as u16 };
        out.put_u32_le(END_SIGNATURE);
        out.put_u16_le(0); // this disk
        out.put_u16_le(0); // disk where the central directory starts
        out.put_u16_le(count16); // entries on this disk
        out.put_u16_le(count16);
        out.put_u32_le(capped(directory_size, big_size));
        out.put_u32_le(capped(directory_start, big_start));
        out.put_u16_le(0); // comment length
        out.freeze()
    }

    fn put_central_header(&self, out: &mut BytesMut, entry: &Finished) {
        let big_size = entry.size >= self.zip64_bytes;
        let big_offset = entry.offset >= self.zip64_bytes;
        // The zip64 extra field holds exactly the values whose header field is 0xFFFFFFFF, in
        // this order: uncompressed size, compressed size, local header offset.
        let mut extra = BytesMut::new();
        if big_size || big_offset {
            let len = if big_size { 16 } else { 0 } + if big_offset { 8 } else { 0 };
            extra.put_u16_le(ZIP64_EXTRA_ID);
            extra.put_u16_le(len);
            if big_size {
                extra.put_u64_le(entry.size);
                extra.put_u64_le(entry.size);
            }
            if big_offset {
                extra.put_u64_le(entry.offset);
            }
        }
        let version = if extra.is_empty() {
            VERSION
        } else {
            VERSION_ZIP64
        };
        out.put_u32_le(CENTRAL_HEADER_SIGNATURE);
        out.put_u16_le(MADE_BY_UNIX | version);
        out.put_u16_le(version);
        out.put_u16_le(FLAGS);
        out.put_u16_le(0); // stored
        out.put_u16_le(DOS_TIME);
        out.put_u16_le(DOS_DATE);
        out.put_u32_le(entry.crc);
        out.put_u32_le(capped(entry.size, big_size));
        out.put_u32_le(capped(entry.size, big_size));
        out.put_u16_le(entry.name.len() as u16);
        out.put_u16_le(extra.len() as u16);
        out.put_u16_le(0); // comment length
        out.put_u16_le(0); // disk where the entry starts
        out.put_u16_le(0); // internal attributes
        out.put_u32_le(EXTERNAL_ATTRIBUTES);
        out.put_u32_le(capped(entry.offset, big_offset));
        out.put_slice(entry.name.as_bytes());
        out.put_slice(&extra);
    }
}

/// `value` as a 32-bit header field, or the "see zip64" marker.
fn capped(value: u64, big: bool) -> u32 {
    if big { u32::MAX } else { value as u32 }
}

fn check_entry_name(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > usize::from(u16::MAX) {
        "is too long"
    } else if name.chars().any(char::is_control) {
        "holds control characters"
    } else if name.starts_with(['/', '\\']) || name.split(['/', '\\']).any(|part| part == "..") {
        "leaves the archive"
    } else {
        return Ok(());
    };
    Err(Error::invalid(format!("zip entry name {name:?} {problem}")))
}

/// One line of a bundle's manifest: one input image and what became of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ManifestRow {
    pub index: u32,
    pub input_name: String,
    /// The output's entry name in the bundle; empty if the image failed.
    pub output_name: String,
    pub state: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub worker: String,
    pub duration_ms: u64,
    pub error: String,
}

/// The CSV header: [`ManifestRow`]'s fields, in order, named as in the JSON manifest.
const CSV_COLUMNS: [&str; 10] = [
    "index",
    "input_name",
    "output_name",
    "state",
    "size_bytes",
    "width",
    "height",
    "worker",
    "duration_ms",
    "error",
];

/// The manifest as a JSON array of objects keyed by [`ManifestRow`]'s field names.
pub fn manifest_json(rows: &[ManifestRow]) -> Vec<u8> {
    // Plain strings and integers: serialising cannot fail.
    let mut json = serde_json::to_vec_pretty(rows).expect("manifest rows serialise to json");
    json.push(b'\n');
    json
}

/// The manifest as CSV: a header line, then one line per row, quoted per RFC 4180 and ended
/// with `\r\n`.
pub fn manifest_csv(rows: &[ManifestRow]) -> Vec<u8> {
    let mut csv = CSV_COLUMNS.join(",");
    csv.push_str("\r\n");
    for row in rows {
        let fields = [
            Cow::Owned(row.index.to_string()),
            csv_field(&row.input_name),
            csv_field(&row.output_name),
            csv_field(&row.state),
            Cow::Owned(row.size_bytes.to_string()),
            Cow::Owned(row.width.to_string()),
            Cow::Owned(row.height.to_string()),
            csv_field(&row.worker),
            Cow::Owned(row.duration_ms.to_string()),
            csv_field(&row.error),
        ];
        csv.push_str(&fields.join(","));
        csv.push_str("\r\n");
    }
    csv.into_bytes()
}

/// Quotes a field that holds a separator, a quote or a line break, doubling its quotes.
pub(crate) fn csv_field(value: &str) -> Cow<'_, str> {
    // A user's file name like `=HYPERLINK(...)` would run as a formula when the manifest is
    // opened in a spreadsheet: a leading quote makes it text (OWASP's CSV injection advice).
    let value: Cow<'_, str> = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{value}"))
    } else {
        Cow::Borrowed(value)
    };
    if value.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", value.replace('"', "\"\"")))
    } else {
        value
    }
}

/// The file extension of an output with `content_type` (`image/webp` → `webp`), for every
/// name the gateway gives an output.
pub fn extension(content_type: &str) -> &str {
    content_type.strip_prefix("image/").unwrap_or("bin")
}

/// The entry name of an output in the bundle: the input's stem with the output format's
/// `extension` (`photo.png` → `photo.webp`), without any directory part or characters that are
/// unsafe in Windows file names, or `image-<index>` when nothing usable is left. Unique within
/// the bundle: `taken` holds the lowercased names already used (pre-fill it with the manifest
/// names) and gets the new one.
pub fn output_name(
    input_name: &str,
    index: u32,
    extension: &str,
    taken: &mut HashSet<String>,
) -> String {
    let base = input_name.rsplit(['/', '\\']).next().unwrap_or(input_name);
    let (stem, _) = split_extension(base);
    let mut stem = sanitize(stem);
    if stem.is_empty() || is_reserved_on_windows(&stem) {
        stem = format!("image-{index}");
    }
    let extension = sanitize(extension);
    unique_name(&stem, &extension, taken)
}

/// Drops characters Windows refuses in file names, then the leading and trailing dots and
/// spaces that Windows strips or that hide a file on Unix.
fn sanitize(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| !c.is_control() && !r#"<>:"/\|?*"#.contains(*c))
        .collect();
    kept.trim_matches(|c: char| c == '.' || c.is_whitespace())
        .to_owned()
}

/// Device names Windows will not create a file under, whatever the extension.
fn is_reserved_on_windows(stem: &str) -> bool {
    let device = stem.split('.').next().unwrap_or(stem).trim_end();
    let upper = device.to_ascii_uppercase();
    matches!(upper.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((upper.starts_with("COM") || upper.starts_with("LPT"))
            && upper.len() == 4
            && upper.as_bytes()[3].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};

    use pixelmesh_proto::ErrorCode;
    use zip::{CompressionMethod, ZipArchive};

    use super::*;

    /// Writes `entries` (each a name and its data chunks) through `writer` into one buffer,
    /// checking the running offset on the way.
    fn bundle(mut writer: ZipStreamWriter, entries: &[(&str, Vec<Vec<u8>>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, chunks) in entries {
            out.extend_from_slice(&writer.start_entry(name).expect("start entry"));
            for chunk in chunks {
                writer.data(chunk);
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(&writer.finish_entry());
            assert_eq!(writer.offset(), out.len() as u64);
        }
        out.extend_from_slice(&writer.finish());
        out
    }

    fn crc_of(data: &[u8]) -> u32 {
        crc32fast::hash(data)
    }

    fn sample(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    fn entries() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        vec![
            (
                "photo.webp",
                vec![sample(70_000, 1), sample(3, 2), sample(40_000, 3)],
            ),
            ("empty.png", vec![]),
            ("nested/ünïcødé.png", vec![sample(1_000, 4)]),
            ("manifest.json", vec![b"[]\n".to_vec()]),
        ]
    }

    /// Reads `bytes` back with the `zip` crate and compares every entry with `entries`.
    fn assert_reads_back(bytes: Vec<u8>, entries: &[(&str, Vec<Vec<u8>>)]) {
        let mut archive = ZipArchive::new(Cursor::new(bytes)).expect("zip reads the bundle");
        assert_eq!(archive.len(), entries.len());
        for (index, (name, chunks)) in entries.iter().enumerate() {
            let expected = chunks.concat();
            let mut file = archive.by_index(index).expect("entry");
            assert_eq!(file.name().expect("name"), *name);
            assert_eq!(file.compression(), CompressionMethod::Stored);
            assert_eq!(file.size(), expected.len() as u64);
            assert_eq!(file.crc32(), crc_of(&expected));
            let mut data = Vec::new();
            // Reading to the end also makes `zip` check the CRC.
            file.read_to_end(&mut data).expect("entry data");
            assert_eq!(data, expected, "{name}");
        }
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([bytes[at], bytes[at + 1]])
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    fn find(bytes: &[u8], signature: u32) -> Option<usize> {
        bytes.windows(4).rposition(|w| w == signature.to_le_bytes())
    }

    #[test]
    fn csv_fields_that_a_spreadsheet_would_run_become_text() {
        assert_eq!(csv_field("=1+2"), "'=1+2");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("-3,x"), "\"'-3,x\"");
        assert_eq!(csv_field("photo.jpg"), "photo.jpg");
    }

    #[test]
    fn bundle_reads_back_with_the_zip_crate() {
        let entries = entries();
        let bytes = bundle(ZipStreamWriter::new(), &entries);
        assert_eq!(u32_at(&bytes, 0), LOCAL_HEADER_SIGNATURE);
        assert_eq!(u16_at(&bytes, 6), FLAGS);
        assert!(
            find(&bytes, ZIP64_END_SIGNATURE).is_none(),
            "small bundle uses zip64"
        );
        assert_reads_back(bytes, &entries);
    }

    #[test]
    fn zip64_everywhere_still_reads_back() {
        let entries = entries();
        let bytes = bundle(ZipStreamWriter::with_zip64_thresholds(0, 0), &entries);

        let end = find(&bytes, END_SIGNATURE).expect("end record");
        assert_eq!(end + 22, bytes.len());
        assert_eq!(u16_at(&bytes, end + 10), 0xFFFF, "entry count");
        assert_eq!(u32_at(&bytes, end + 12), u32::MAX, "directory size");
        assert_eq!(u32_at(&bytes, end + 16), u32::MAX, "directory offset");
        let locator = find(&bytes, ZIP64_LOCATOR_SIGNATURE).expect("zip64 locator");
        assert_eq!(locator + 20, end);
        let zip64_end = find(&bytes, ZIP64_END_SIGNATURE).expect("zip64 end record");
        assert_eq!(zip64_end + 56, locator);
        assert_eq!(u32_at(&bytes, locator + 8) as usize, zip64_end);
        assert_eq!(u32_at(&bytes, zip64_end + 32), entries.len() as u32);

        let central = find(&bytes, CENTRAL_HEADER_SIGNATURE).expect("central header");
        assert_eq!(u16_at(&bytes, central + 6), VERSION_ZIP64);
        assert_eq!(u32_at(&bytes, central + 20), u32::MAX, "size marker");
        assert_eq!(u16_at(&bytes, central + 30), 4 + 24, "zip64 extra length");

        assert_reads_back(bytes, &entries);
    }

    #[test]
    fn zip64_only_where_needed_reads_back() {
        // From 100 bytes on: the first entry is small and at offset 0, the second is large,
        // the last ones start past the threshold, and four entries pass the count threshold.
        let entries = vec![
            ("a.png", vec![sample(10, 1)]),
            ("b.png", vec![sample(150, 2)]),
            ("c.png", vec![sample(20, 3)]),
            ("d.png", vec![]),
        ];
        let bytes = bundle(ZipStreamWriter::with_zip64_thresholds(100, 4), &entries);
        let first = bytes
            .windows(4)
            .position(|w| w == CENTRAL_HEADER_SIGNATURE.to_le_bytes())
            .expect("central header");
        assert_eq!(
            u16_at(&bytes, first + 6),
            VERSION,
            "small first entry uses zip64"
        );
        assert_eq!(
            u16_at(&bytes, first + 30),
            0,
            "small first entry has an extra field"
        );
        let last = find(&bytes, CENTRAL_HEADER_SIGNATURE).expect("central header");
        assert_eq!(u16_at(&bytes, last + 30), 4 + 8, "offset only");
        assert!(find(&bytes, ZIP64_END_SIGNATURE).is_some());
        assert_reads_back(bytes, &entries);
    }

    #[test]
    fn zip64_data_descriptor_for_large_entries() {
        let mut writer = ZipStreamWriter::with_zip64_thresholds(100, 100);
        writer.start_entry("big.png").expect("start");
        writer.data(&sample(150, 1));
        assert_eq!(writer.finish_entry().len(), 24);
        writer.start_entry("small.png").expect("start");
        writer.data(&sample(50, 1));
        assert_eq!(writer.finish_entry().len(), 16);
    }

    #[test]
    fn refuses_unsafe_entry_names() {
        let mut writer = ZipStreamWriter::new();
        for (name, problem) in [
            ("", "is empty"),
            ("../x.png", "leaves the archive"),
            ("a/../../x.png", "leaves the archive"),
            ("/x.png", "leaves the archive"),
            ("\\x.png", "leaves the archive"),
            ("a\nb.png", "holds control characters"),
        ] {
            let err = writer.start_entry(name).expect_err(name);
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert_eq!(err.message, format!("zip entry name {name:?} {problem}"));
        }
        assert_eq!(writer.offset(), 0, "refused names emitted bytes");
    }

    #[test]
    fn refuses_a_second_open_entry_and_finish_closes_one() {
        let mut writer = ZipStreamWriter::new();
        let mut out = writer.start_entry("a.png").expect("start").to_vec();
        let err = writer.start_entry("b.png").expect_err("two open entries");
        assert_eq!(err.code, ErrorCode::Internal);
        writer.data(b"abc");
        out.extend_from_slice(b"abc");
        out.extend_from_slice(&writer.finish());
        assert_reads_back(out, &[("a.png", vec![b"abc".to_vec()])]);
    }

    fn row(input_name: &str, error: &str) -> ManifestRow {
        ManifestRow {
            index: 3,
            input_name: input_name.to_owned(),
            output_name: String::new(),
            state: "failed".to_owned(),
            size_bytes: 0,
            width: 0,
            height: 0,
            worker: "filter-1".to_owned(),
            duration_ms: 12,
            error: error.to_owned(),
        }
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let rows = [
            row("plain.png", ""),
            row("a,b.png", "said \"no\"\nthen stopped"),
            row("cr\r.png", "x"),
        ];
        let csv = String::from_utf8(manifest_csv(&rows)).expect("utf-8");
        let expected = "index,input_name,output_name,state,size_bytes,width,height,worker,duration_ms,error\r\n\
             3,plain.png,,failed,0,0,0,filter-1,12,\r\n\
             3,\"a,b.png\",,failed,0,0,0,filter-1,12,\"said \"\"no\"\"\nthen stopped\"\r\n\
             3,\"cr\r.png\",,failed,0,0,0,filter-1,12,x\r\n";
        assert_eq!(csv, expected);
        assert_eq!(
            String::from_utf8(manifest_csv(&[])).expect("utf-8"),
            format!("{}\r\n", CSV_COLUMNS.join(","))
        );
    }

    #[test]
    fn json_uses_the_field_names_as_keys() {
        let json = manifest_json(&[row("a\"b.png", "bad")]);
        let value: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
        let rows = value.as_array().expect("an array");
        assert_eq!(rows.len(), 1);
        let keys: Vec<&str> = rows[0]
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, CSV_COLUMNS);
        assert_eq!(rows[0]["input_name"], "a\"b.png");
        assert_eq!(rows[0]["duration_ms"], 12);
        assert_eq!(manifest_json(&[]), b"[]\n");
    }

    #[test]
    fn output_names_are_unique_and_safe() {
        let mut taken = HashSet::from(["manifest.json".to_owned()]);
        let mut name = |input: &str, index: u32| output_name(input, index, "webp", &mut taken);
        assert_eq!(name("photo.png", 0), "photo.webp");
        assert_eq!(name("other/Photo.jpg", 1), "Photo-2.webp");
        assert_eq!(name("photo", 2), "photo-3.webp");
        assert_eq!(name("C:\\Users\\me\\holiday.tiff", 3), "holiday.webp");
        assert_eq!(name("a<b>c:d\"e|f?g*h\u{7}.png", 4), "abcdefgh.webp");
        assert_eq!(name("../..", 5), "image-5.webp");
        assert_eq!(name("", 6), "image-6.webp");
        assert_eq!(name("???.png", 7), "image-7.webp");
        assert_eq!(name("con.png", 8), "image-8.webp");
        assert_eq!(name("LPT1.backup.png", 9), "image-9.webp");
        assert_eq!(name("image-9.png", 10), "image-9-2.webp");
        assert_eq!(name(" .hidden. .png", 11), "hidden.webp");
        assert_eq!(name("manifest.png", 12), "manifest.webp");
        assert_eq!(
            output_name("manifest.png", 13, "json", &mut taken),
            "manifest-2.json"
        );
        assert_eq!(output_name("x.png", 14, ".png", &mut taken), "x.png");
        let long = output_name(&"ä".repeat(300), 15, "webp", &mut taken);
        assert!(long.len() <= 255 && long.ends_with(".webp"), "{long}");
    }
}
