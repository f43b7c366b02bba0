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
    let decoded = percent_decode(segment);
    sanitize_name(Some(&decoded), index)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a URL list: CSV when the first line has a `url` column (and is not itself a URL),
/// otherwise one URL per line. Blank lines are skipped, and lines starting with `#` before a
/// CSV header and in a plain list (in CSV rows `#` is data: a name may start with it).
/// `first_index` numbers the inputs for fallback names. Errors name the line; more than `max`
/// URLs is refused.
pub fn parse_list(text: &str, first_index: usize, max: usize) -> Result<Vec<ImageInput>, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
        .skip_while(|(_, line)| line.starts_with('#'))
        .peekable();
    // CSV when the header names a `url` column; a first line holding a URL is data, whatever
    // its query says (`https://a.example/?a,url`).
    let columns = lines.peek().and_then(|(_, header)| {
        if header.contains("://") {
            return None;
        }
        let fields = split_csv_line(header);
        let position = |name: &str| {
            fields
                .iter()
                .position(|field| field.trim().eq_ignore_ascii_case(name))
        };
        position("url").map(|url| (url, position("name")))
    });
    if columns.is_some() {
        lines.next();
    }
    let csv = columns.is_some();
    let lines = lines.filter(|(_, line)| csv || !line.starts_with('#'));
    let mut inputs = Vec::new();
    for (line_number, line) in lines {
        if inputs.len() >= max {
            return Err(Error::too_large(format!(
                "too many urls: at most {max} in one list"
            )));
        }
        let (url, name) = match columns {
            Some((url_column, name_column)) => {
                let fields = split_csv_line(line);
                let url = fields.get(url_column).cloned().unwrap_or_default();
                let name = name_column.and_then(|column| fields.get(column).cloned());
                (url, name)
            }
            None => (line.to_string(), None),
        };
        if url.trim().is_empty() {
            return Err(Error::invalid(format!("line {line_number}: no url")));
        }
        let parsed = check_url(&url)
            .map_err(|message| Error::invalid(format!("line {line_number}: {message}")))?;
        let index = first_index + inputs.len();
        let name = match name.filter(|name| !name.trim().is_empty()) {
            Some(name) => sanitize_name(Some(&name), index),
            None => name_of(&parsed, index),
        };
        inputs.push(ImageInput {
            url: parsed.into(),
            name,
            ..Default::default()
        });
    }
    Ok(inputs)
}

/// One CSV line's fields (RFC 4180 quoting, `""` inside quotes; fields on one line).
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    fields.push(field.trim().to_string());
    fields
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
