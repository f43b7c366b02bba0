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

/// Reads a URL list: CSV when the first line that is neither blank nor a `#` comment has a
/// `url` column (and is not itself a URL), otherwise one URL per line. Blank lines are
/// skipped; `#` comments only in a plain list and above a CSV header (in CSV rows `#` is data:
/// a name may start with it). CSV is read by the `csv` crate (RFC 4180 quoting, quoted line
/// breaks). `first_index` numbers the inputs for fallback names. Errors name the line; more
/// than `max` URLs is refused.
pub fn parse_list(text: &str, first_index: usize, max: usize) -> Result<Vec<ImageInput>, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut inputs = Vec::new();
    let mut push = |line: usize, url: &str, name: Option<&str>| {
        if inputs.len() >= max {
            return Err(Error::too_large(format!(
                "too many urls: at most {max} in one list"
            )));
        }
        if url.trim().is_empty() {
            return Err(Error::invalid(format!("line {line}: no url")));
        }
        let parsed =
            check_url(url).map_err(|message| Error::invalid(format!("line {line}: {message}")))?;
        let index = first_index + inputs.len();
        let name = match name.filter(|name| !name.trim().is_empty()) {
            Some(name) => sanitize_name(Some(name), index),
            None => name_of(&parsed, index),
        };
        inputs.push(ImageInput {
            url: parsed.into(),
            name,
            ..Default::default()
        });
        Ok(())
    };

    let mut offset = 0;
    let header = text
        .split_inclusive('\n')
        .enumerate()
        .find_map(|(index, line)| {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                offset += line.len();
                None
            } else {
                Some((index, trimmed))
            }
        });
    let Some((header_index, header)) = header else {
        return Ok(inputs);
    };
    // A first line holding a URL is data, whatever its query says (`https://a/?a,url`).
    if !header.contains("://") {
        // Each line trimmed, so a row indented before its first quote still reads quoted,
        // and lines of spaces become empty lines, which the reader skips; line numbers stay.
        // A row of empty cells (`""`) still reads as a row without a url.
        let mut rows = String::with_capacity(text.len() - offset);
        for line in text[offset..].split_inclusive('\n') {
            rows.push_str(line.trim());
            if line.ends_with('\n') {
                rows.push('\n');
            }
        }
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            // Rows end at a line feed only, as the plain form's lines do (`\r` is trimmed).
            .terminator(csv::Terminator::Any(b'\n'))
            .trim(csv::Trim::All)
            .from_reader(rows.as_bytes());
        let columns = reader.headers().ok().and_then(|fields| {
            let position = |name: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(name));
            position("url").map(|url| (url, position("name")))
        });
        if let Some((url_column, name_column)) = columns {
            // The reader's own line count leaves out the blank lines it skips: count line
            // feeds up to each row's first byte instead (rows only move forward).
            let (mut counted_to, mut feeds) = (0, 0);
            let mut line_at = |byte: u64| {
                let byte = usize::try_from(byte).unwrap_or(rows.len()).min(rows.len());
                let start = byte + rows[byte..].bytes().take_while(|&b| b == b'\n').count();
                let start = start.max(counted_to);
                feeds += rows.as_bytes()[counted_to..start]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                counted_to = start;
                header_index + feeds + 1
            };
            let mut record = csv::StringRecord::new();
            loop {
                let before = reader.position().byte();
                match reader.read_record(&mut record) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(err) => {
                        let line = line_at(before);
                        return Err(Error::invalid(format!("line {line}: {err}")));
                    }
                }
                let line = line_at(record.position().map_or(before, csv::Position::byte));
                let url = record.get(url_column).unwrap_or_default();
                push(line, url, name_column.and_then(|column| record.get(column)))?;
            }
            return Ok(inputs);
        }
    }
    for (index, line) in text.lines().enumerate().skip(header_index) {
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            push(index + 1, line, None)?;
        }
    }
    Ok(inputs)
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

    #[test]
    fn a_list_over_its_cap_is_refused() {
        let list = "https://example.com/a\n".repeat(4);
        assert_eq!(parse_list(&list, 0, 4).expect("at the cap").len(), 4);
        let err = parse_list(&list, 0, 3).expect_err("over the cap");
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
    }
}
