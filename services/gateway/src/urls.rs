//! URL inputs: a list of image URLs, as text (one per line) or CSV with a `url` column (and
//! optionally a `name` column), read into job inputs. Each URL is checked for form here;
//! where it may be fetched from (SSRF rules, host allow-list) is decided by the workers that
//! fetch it, against the addresses they resolve.

use pixelmesh_proto::{Error, v1::ImageInput};
use url::Url;

use crate::http::sanitize_name;

/// Longest URL accepted: what browsers and CDNs reliably handle.
pub const MAX_URL_BYTES: usize = 2048;

/// `url` as an input URL: absolute http(s), a host, no credentials, at most
/// [`MAX_URL_BYTES`]. Returns it normalised (lowercase scheme and host, IDNA, escapes).
pub fn check_url(url: &str) -> Result<Url, String> {
    let url = url.trim();
    if url.len() > MAX_URL_BYTES {
        return Err(format!("url is over {MAX_URL_BYTES} bytes"));
    }
    let parsed = Url::parse(url).map_err(|err| format!("invalid url {url:?}: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url {url:?}: only http and https urls are fetched"));
    }
    if parsed.host().is_none() {
        return Err(format!("url {url:?} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "url {url:?} carries credentials: they would be stored with the job; not accepted"
        ));
    }
    if parsed.as_str().len() > MAX_URL_BYTES {
        return Err(format!("url is over {MAX_URL_BYTES} bytes once normalised"));
    }
    Ok(parsed)
}

/// The image name a URL gives: its last path segment, unescaped and made safe; `image-N`
/// when it has none.
pub fn name_of(url: &Url, index: usize) -> String {
    let segment = url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    sanitize_name(Some(&decoded), index)
}

/// Longest line of a URL list: a URL of [`MAX_URL_BYTES`] with a name and other CSV
/// columns fits. Only the line being read is held, so a list's memory does not grow with it.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Longest CSV record: a quoted field may span lines.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Reads a whole URL list (see [`ListReader`]) into inputs numbered from `first_index` for
/// their fallback names; more than `max` URLs is refused.
pub fn parse_list(text: &str, first_index: usize, max: usize) -> Result<Vec<ImageInput>, Error> {
    let mut reader = ListReader::new(first_index, max);
    let mut inputs = Vec::new();
    reader.push(text.as_bytes(), &mut inputs)?;
    reader.finish(&mut inputs)?;
    Ok(inputs)
}

/// A URL list read as its bytes arrive, in pieces of any size: CSV when the first line that
/// is neither blank nor a `#` comment has a `url` column (and is not itself a URL), otherwise
/// one URL per line. Blank lines are skipped; `#` comments only in a plain list and above a
/// CSV header (in CSV rows `#` is data: a name may start with it). CSV rows are read by the
/// `csv` crate (RFC 4180 quoting); a quoted field may span lines, which is why a row is cut
/// where its quotes balance. Each line is trimmed first, so a row indented before its first
/// quote still reads quoted. Errors name the line; more than `max` URLs is refused.
pub struct ListReader {
    first_index: usize,
    max: usize,
    /// URLs read so far.
    count: usize,
    /// Lines read so far.
    lines: usize,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    form: Form,
}

enum Form {
    /// No line but blanks and comments yet.
    Unknown,
    Plain,
    Csv {
        url_column: usize,
        name_column: Option<usize>,
        /// The lines of a row whose quotes are not balanced yet.
        row: String,
        row_line: usize,
        quotes: usize,
    },
}

impl ListReader {
    pub fn new(first_index: usize, max: usize) -> Self {
        ListReader {
            first_index,
            max,
            count: 0,
            lines: 0,
            partial: Vec::new(),
            form: Form::Unknown,
        }
    }

    /// Reads the list's next bytes, pushing each URL they complete onto `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<ImageInput>) -> Result<(), Error> {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = (&bytes[..end], &bytes[end + 1..]);
            bytes = rest;
            if self.partial.is_empty() {
                self.line(line, out)?;
            } else {
                self.hold(line)?;
                let whole = std::mem::take(&mut self.partial);
                self.line(&whole, out)?;
                self.partial = whole;
                self.partial.clear();
            }
        }
        self.hold(bytes)
    }

    /// Reads the end of the list: its last line, if no line feed ended it. Returns how many
    /// URLs the list held.
    pub fn finish(mut self, out: &mut Vec<ImageInput>) -> Result<usize, Error> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last, out)?;
        }
        if let Form::Csv { row, row_line, .. } = &self.form
            && !row.is_empty()
        {
            return Err(Error::invalid(format!(
                "line {row_line}: a quoted field is not closed by the end of the list"
            )));
        }
        Ok(self.count)
    }

    /// Keeps the start of a line until its end arrives.
    fn hold(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.partial.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(Error::invalid(format!(
                "line {}: over {MAX_LINE_BYTES} bytes",
                self.lines + 1
            )));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, bytes: &[u8], out: &mut Vec<ImageInput>) -> Result<(), Error> {
        self.lines += 1;
        let number = self.lines;
        if bytes.len() > MAX_LINE_BYTES {
            return Err(Error::invalid(format!(
                "line {number}: over {MAX_LINE_BYTES} bytes"
            )));
        }
        let bytes = match number {
            1 => bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes),
            _ => bytes,
        };
        let line = std::str::from_utf8(bytes)
            .map_err(|_| Error::invalid(format!("line {number} is not utf-8")))?
            .trim();
        match &mut self.form {
            Form::Unknown => {
                if line.is_empty() || line.starts_with('#') {
                    return Ok(());
                }
                // A first line holding a URL is data, whatever its query says
                // (`https://a/?a,url`).
                if !line.contains("://")
                    && let Some((url_column, name_column)) = header_columns(line)
                {
                    self.form = Form::Csv {
                        url_column,
                        name_column,
                        row: String::new(),
                        row_line: 0,
                        quotes: 0,
                    };
                    return Ok(());
                }
                self.form = Form::Plain;
                self.entry(number, line, None, out)
            }
            Form::Plain if line.is_empty() || line.starts_with('#') => Ok(()),
            Form::Plain => self.entry(number, line, None, out),
            Form::Csv {
                url_column,
                name_column,
                row,
                row_line,
                quotes,
            } => {
                if row.is_empty() {
                    if line.is_empty() {
                        return Ok(());
                    }
                    *row_line = number;
                } else {
                    row.push('\n');
                }
                row.push_str(line);
                *quotes += line.bytes().filter(|&b| b == b'"').count();
                if row.len() > MAX_RECORD_BYTES {
                    return Err(Error::invalid(format!(
                        "line {row_line}: a row over {MAX_RECORD_BYTES} bytes (is a quote not closed?)"
                    )));
                }
                // A line feed inside quotes is data: the row goes on.
                if *quotes % 2 == 1 {
                    return Ok(());
                }
                let (url_column, name_column, line) = (*url_column, *name_column, *row_line);
                let record =
                    csv_record(row).map_err(|err| Error::invalid(format!("line {line}: {err}")))?;
                row.clear();
                *quotes = 0;
                let url = record.get(url_column).unwrap_or_default();
                let name = name_column.and_then(|column| record.get(column));
                self.entry(line, url, name, out)
            }
        }
    }

    fn entry(
        &mut self,
        line: usize,
        url: &str,
        name: Option<&str>,
        out: &mut Vec<ImageInput>,
    ) -> Result<(), Error> {
        if self.count >= self.max {
            return Err(Error::too_large(format!(
                "too many urls: at most {} in one list",
                self.max
            )));
        }
        if url.trim().is_empty() {
            return Err(Error::invalid(format!("line {line}: no url")));
        }
        let parsed =
            check_url(url).map_err(|message| Error::invalid(format!("line {line}: {message}")))?;
        let index = self.first_index + self.count;
        let name = match name.filter(|name| !name.trim().is_empty()) {
            Some(name) => sanitize_name(Some(name), index),
            None => name_of(&parsed, index),
        };
        self.count += 1;
        out.push(ImageInput {
            url: parsed.into(),
            name,
            ..Default::default()
        });
        Ok(())
    }
}

/// The `url` and `name` columns of a CSV header line, if it has a `url` column.
fn header_columns(line: &str) -> Option<(usize, Option<usize>)> {
    let fields = csv_record(line.trim_start_matches('\u{feff}')).ok()?;
    let position = |name: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(name));
    position("url").map(|url| (url, position("name")))
}

/// One CSV row (its quotes balanced), its fields trimmed.
fn csv_record(row: &str) -> Result<csv::StringRecord, csv::Error> {
    // The reader drops a byte-order mark at the start of its input, which here is a row's
    // start: a mark of the reader's own goes first, so one the row begins with is data.
    let mut input = String::with_capacity(row.len() + 3);
    input.push('\u{feff}');
    input.push_str(row);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        // Rows end at a line feed only, as the plain form's lines do (`\r` is trimmed).
        .terminator(csv::Terminator::Any(b'\n'))
        .trim(csv::Trim::All)
        .buffer_capacity(input.len().max(64))
        .from_reader(input.as_bytes());
    let mut record = csv::StringRecord::new();
    reader.read_record(&mut record)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_proto::ErrorCode;

    fn urls(inputs: &[ImageInput]) -> Vec<&str> {
        inputs.iter().map(|input| input.url.as_str()).collect()
    }

    #[test]
    fn a_text_list_has_one_url_per_line() {
        let list = "\u{feff}https://example.com/a/cat%20one.jpg\n\n# a comment\n  http://EXAMPLE.org/dog.png  \r\nhttps://example.net/\n";
        let inputs = parse_list(list, 0, 10).expect("list");
        assert_eq!(
            urls(&inputs),
            [
                "https://example.com/a/cat%20one.jpg",
                "http://example.org/dog.png",
                "https://example.net/"
            ]
        );
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["cat one.jpg", "dog.png", "image-2"]);
        assert!(inputs.iter().all(|input| input.blob_id.is_empty()));
    }

    #[test]
    fn a_csv_list_takes_its_url_and_name_columns() {
        let list = "id,Name,URL\n1,\"Front, big\",https://example.com/1.jpg\n2,,\"https://example.com/q?a=1,2\"\n";
        let inputs = parse_list(list, 5, 10).expect("csv");
        assert_eq!(
            urls(&inputs),
            ["https://example.com/1.jpg", "https://example.com/q?a=1,2"]
        );
        assert_eq!(inputs[0].name, "Front, big");
        assert_eq!(inputs[1].name, "q");
    }

    #[test]
    fn a_csv_name_may_span_lines_and_errors_still_name_the_right_line() {
        let list = "# photos\nname,url\n\"two\nlines\",https://example.com/a.jpg\n  \n#1 front,https://example.com/b.jpg\n";
        let inputs = parse_list(list, 0, 10).expect("csv");
        assert_eq!(
            urls(&inputs),
            ["https://example.com/a.jpg", "https://example.com/b.jpg"]
        );
        // A row starting with `#` is data.
        assert_eq!(inputs[1].name, "#1 front");
        let bad = format!("{list}x,ftp://example.com/c.jpg\n");
        let err = parse_list(&bad, 0, 10).expect_err("ftp");
        assert!(err.message.starts_with("line 7: "), "{}", err.message);
    }

    #[test]
    fn bad_urls_are_refused_naming_the_line() {
        for (list, needle) in [
            (
                "https://example.com/a.jpg\nftp://example.com/b.jpg",
                "line 2",
            ),
            ("file:///etc/passwd", "only http and https"),
            ("https://user:secret@example.com/a.jpg", "credentials"),
            ("not a url", "invalid url"),
            ("url\n\"\"", "line 2: no url"),
        ] {
            let err = parse_list(list, 0, 10).expect_err(list);
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains(needle), "{list:?}: {}", err.message);
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long).expect_err("long").contains("2048"));
    }

    /// The list in pieces cut at `cuts`, read as a stream.
    fn read_in_pieces(list: &str, cuts: &[usize]) -> Result<Vec<ImageInput>, Error> {
        let mut reader = ListReader::new(0, 10);
        let mut inputs = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([list.len()].iter()) {
            reader.push(&list.as_bytes()[from..cut], &mut inputs)?;
            from = cut;
        }
        reader.finish(&mut inputs)?;
        Ok(inputs)
    }

    #[test]
    fn a_list_reads_the_same_however_its_bytes_are_cut() {
        for list in [
            "\u{feff}# photos\nname,url\n\"two\n\nlines, \"\"quoted\"\"\",https://example.com/a.jpg\n  \n  \"#1 front\" , https://ex\u{e4}mple.com/b.jpg\r\nc,https://example.com/c.jpg",
            "https://example.com/a.jpg\r\n\n# note\nhttps://example.com/\u{e9}t\u{e9}.png\nhttps://example.com/z",
        ] {
            let whole = read_in_pieces(list, &[]).expect("whole");
            assert_eq!(whole.len(), 3, "{list:?}");
            for cut in 0..=list.len() {
                assert_eq!(read_in_pieces(list, &[cut]).expect("two pieces"), whole);
            }
            let bytes: Vec<usize> = (1..list.len()).collect();
            assert_eq!(read_in_pieces(list, &bytes).expect("bytes"), whole);
        }
        let csv = read_in_pieces(
            "name,url\n\"two\n\nlines, \"\"q\"\"\",https://example.com/a.jpg\n",
            &[3, 17],
        )
        .expect("csv");
        // The quoted line breaks were read as data (names drop control characters).
        assert_eq!(csv[0].name, "twolines, \"q\"");
    }

    #[test]
    fn a_line_or_row_too_long_and_a_quote_left_open_are_refused() {
        let long = format!("https://example.com/{}\n", "a".repeat(MAX_LINE_BYTES));
        // Refused while the line is still arriving, once it outgrows the cap.
        let mut reader = ListReader::new(0, 10);
        let err = reader
            .push(&long.as_bytes()[..MAX_LINE_BYTES + 1], &mut Vec::new())
            .expect_err("long line");
        assert_eq!(err.message, format!("line 1: over {MAX_LINE_BYTES} bytes"));
        let open = "name,url\n\"open,https://example.com/a.jpg\nb,https://example.com/b.jpg\n";
        let err = parse_list(open, 0, 10).expect_err("open quote");
        assert!(
            err.message
                .starts_with("line 2: a quoted field is not closed"),
            "{}",
            err.message
        );
        let row = format!("name,url\n\"{}\n", "x\n".repeat(MAX_RECORD_BYTES / 2));
        let err = parse_list(&row, 0, 10).expect_err("long row");
        assert!(
            err.message.starts_with("line 2: a row over"),
            "{}",
            err.message
        );
        let mut reader = ListReader::new(0, 10);
        let err = reader
            .push(b"https://example.com/a.jpg\n\xff\xfe\n", &mut Vec::new())
            .expect_err("not utf-8");
        assert_eq!(err.message, "line 2 is not utf-8");
    }

    #[test]
    fn a_list_over_its_cap_is_refused() {
        let list = "https://example.com/a\n".repeat(4);
        assert_eq!(parse_list(&list, 0, 4).expect("at the cap").len(), 4);
        let err = parse_list(&list, 0, 3).expect_err("over the cap");
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
    }
}
