//! Property tests of what uploads control at the gateway: the URL-list parser
//! (`urls::parse_list`, `urls::check_url`) and the ZIP checks (`archive::open`, `plan`,
//! `extract`), against the rules the README's "URL inputs" and "ZIP inputs" give.
//!
//! Each property runs a fixed number of cases through [`check`], which prints how many ran;
//! the counts keep the file within seconds on two cores, as CI runs it.

use std::collections::HashSet;
use std::io::{Cursor, Write};

use pixelmesh_common::testing::check;
use pixelmesh_gateway::archive::{self, Planned, ZipLimits};
use pixelmesh_gateway::http::sanitize_name;
use pixelmesh_gateway::urls::{self, MAX_URL_BYTES};
use pixelmesh_proto::{Error, ErrorCode};
use proptest::prelude::*;
use url::Url;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

// ---------------------------------------------------------------- helpers

/// A display name as the gateway hands it on: non-empty, one path component, no control
/// characters, at most 255 bytes.
fn safe_name(name: &str) -> Result<(), TestCaseError> {
    prop_assert!(!name.is_empty());
    prop_assert!(name.len() <= 255, "{} bytes", name.len());
    prop_assert!(
        !name.contains(['/', '\\']) && !name.chars().any(char::is_control),
        "{:?}",
        name
    );
    Ok(())
}

// ---------------------------------------------------------------- URL lists

/// Pieces of URL lists, glued at random: nearly-valid input reaches deeper than noise.
fn url_token() -> BoxedStrategy<String> {
    let pieces = vec![
        "http://",
        "https://",
        "HTTPS://",
        "ftp://",
        "file:///",
        "javascript:",
        "//",
        "example.com",
        "EXAMPLE.org",
        "xn--bcher-kva.example",
        "bücher.example",
        "127.0.0.1",
        "[::1]",
        "[",
        "]",
        ":",
        ":8080",
        ":99999",
        "user:pw@",
        "@",
        "/",
        "\\",
        "a.jpg",
        "%20",
        "%",
        "%zz",
        "?",
        "#",
        "# comment",
        "=",
        "&",
        ",",
        "\"",
        "\"\"",
        "url",
        "URL",
        "name",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\u{feff}",
        "\u{0}",
        "\u{85}",
        "é",
        "💥",
    ];
    prop_oneof![
        8 => prop::sample::select(pieces).prop_map(String::from),
        1 => "[a-z0-9.-]{1,12}",
        1 => any::<char>().prop_map(String::from),
    ]
    .boxed()
}

fn hostile_list() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(url_token(), 0..60).prop_map(|tokens| tokens.concat()),
        // A valid list with a piece cut out and noise put in.
        (
            valid_list(),
            any::<prop::sample::Index>(),
            0..6_usize,
            url_token()
        )
            .prop_map(|(list, at, cut, noise)| {
                let chars: Vec<char> = list.text.chars().collect();
                let start = at.index(chars.len() + 1);
                let end = (start + cut).min(chars.len());
                let mut out: String = chars[..start].iter().collect();
                out.push_str(&noise);
                out.extend(&chars[end..]);
                out
            }),
    ]
    .boxed()
}

#[test]
fn any_url_list_is_read_or_refused_without_panicking() {
    check(
        "any_url_list_is_read_or_refused_without_panicking",
        3000,
        (hostile_list(), 0..1000_usize, 0..50_usize),
        |(text, first_index, max)| {
            match urls::parse_list(&text, first_index, max) {
                Ok(inputs) => {
                    prop_assert!(inputs.len() <= max);
                    for input in &inputs {
                        // What the list gives is what the checker accepts, already normalised.
                        let url = urls::check_url(&input.url)
                            .map_err(|err| TestCaseError::fail(format!("{err}: {input:?}")))?;
                        prop_assert_eq!(url.as_str(), input.url.as_str());
                        prop_assert!(input.blob_id.is_empty());
                        safe_name(&input.name)?;
                    }
                }
                Err(err) => match err.code {
                    ErrorCode::InvalidArgument => prop_assert!(
                        err.message.starts_with("line "),
                        "message does not name a line: {:?}",
                        err.message
                    ),
                    ErrorCode::ResourceExhausted => prop_assert_eq!(
                        err.message,
                        format!("too many urls: at most {max} in one list")
                    ),
                    other => prop_assert!(false, "{:?}: {}", other, err.message),
                },
            }
            for line in text.lines() {
                if let Ok(url) = urls::check_url(line) {
                    prop_assert!(matches!(url.scheme(), "http" | "https"));
                    prop_assert!(url.host().is_some());
                    prop_assert!(url.username().is_empty() && url.password().is_none());
                    prop_assert!(url.as_str().len() <= MAX_URL_BYTES);
                }
            }
            Ok(())
        },
    );
}

/// An http(s) URL in the normalised form `url` gives it, so a list must give it back as is.
fn canonical_url() -> BoxedStrategy<String> {
    let host = prop_oneof![
        4 => (prop::collection::vec("[a-z0-9]{1,10}", 1..4), "[a-z]{2,6}")
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join("."))),
        1 => (any::<[u8; 4]>()).prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}")),
        1 => Just("[2001:db8::1]".to_string()),
    ];
    let segment = prop_oneof![
        4 => "[A-Za-z0-9_~-]{1,12}(\\.[a-z]{1,4})?",
        1 => "%[0-9A-F]{2}[a-z]{0,4}",
        // Commas, which CSV cells must quote, and a comma-separated `url` field, which must
        // not make a plain list's first line look like a CSV header.
        1 => Just("photo,name".to_string()),
        1 => Just("photo,url".to_string()),
    ];
    let query = prop::collection::vec(
        prop_oneof![
            "[a-z0-9]{1,6}=[a-z0-9]{0,6}",
            Just("url".to_string()),
            Just("a,b".to_string()),
            Just("name".to_string()),
        ],
        1..4,
    )
    .prop_map(|pairs| format!("?{}", pairs.join("&")));
    (
        prop::sample::select(vec!["http", "https"]),
        host,
        prop::option::of(1..=65535_u16),
        prop::collection::vec(segment, 0..5),
        any::<bool>(),
        prop::option::of(query),
        prop::option::of("[a-z0-9]{0,8}"),
    )
        .prop_map(|(scheme, host, port, segments, slash, query, fragment)| {
            let port = port
                .filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)))
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let mut path = format!("/{}", segments.join("/"));
            if slash && !segments.is_empty() {
                path.push('/');
            }
            let query = query.unwrap_or_default();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{path}{query}{fragment}")
        })
        .prop_filter("url keeps it as written", |url| {
            Url::parse(url).is_ok_and(|parsed| parsed.as_str() == url)
        })
        .boxed()
}

/// `https://example.com/` padded to exactly `len` bytes.
fn url_of_len(len: usize) -> String {
    let base = "https://example.com/";
    format!("{base}{}", "a".repeat(len - base.len()))
}

/// One field of a CSV line: quoted when it has to be, and sometimes when not.
fn csv_field(value: &str, quote: bool) -> String {
    if quote || value.contains([',', '"']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// A list of URLs as a client would send it, and what it must read as.
#[derive(Debug, Clone)]
struct List {
    text: String,
    /// The URLs in order, and the name each line gives (if any).
    urls: Vec<(String, Option<String>)>,
    /// 1-based number of each URL's line.
    lines: Vec<usize>,
    csv: bool,
}

#[derive(Debug, Clone)]
enum Filler {
    Blank(String),
    Comment(String),
}

#[derive(Debug, Clone)]
struct Layout {
    bom: bool,
    crlf: Vec<bool>,
    fillers: Vec<Option<Filler>>,
    /// Whitespace around each URL line.
    pads: Vec<(String, String)>,
    quotes: Vec<bool>,
    trailing_newline: bool,
}

fn filler() -> impl Strategy<Value = Filler> {
    prop_oneof![
        "[ \t]{0,3}".prop_map(Filler::Blank),
        "[ \t]{0,2}#[^\n\r]{0,20}".prop_map(Filler::Comment),
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    const N: usize = 40;
    (
        any::<bool>(),
        prop::collection::vec(any::<bool>(), N),
        prop::collection::vec(prop::option::weighted(0.3, filler()), N),
        prop::collection::vec(("[ \t]{0,2}", "[ \t]{0,2}"), N),
        prop::collection::vec(any::<bool>(), N),
        any::<bool>(),
    )
        .prop_map(
            |(bom, crlf, fillers, pads, quotes, trailing_newline)| Layout {
                bom,
                crlf,
                fillers,
                pads,
                quotes,
                trailing_newline,
            },
        )
}

/// The columns of a CSV header: `url`, maybe `name`, and others, in some order and case.
#[derive(Debug, Clone)]
struct Columns {
    names: Vec<String>,
    url: usize,
    name: Option<usize>,
}

fn columns() -> impl Strategy<Value = Columns> {
    (
        prop::sample::select(vec!["url", "URL", "Url", " url "]),
        prop::option::of(prop::sample::select(vec!["name", "Name", "NAME"])),
        prop::collection::vec("(id|title|size|[a-z]{1,6})", 0..3),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    )
        .prop_filter_map(
            "other columns are not url or name",
            |(url, name, others, at_url, at_name)| {
                if others
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case("url") || o.eq_ignore_ascii_case("name"))
                {
                    return None;
                }
                let mut names = others;
                let url_at = at_url.index(names.len() + 1);
                names.insert(url_at, url.to_string());
                let name_at = name.map(|name| {
                    let at = at_name.index(names.len() + 1);
                    names.insert(at, name.to_string());
                    at
                });
                // The name column may have pushed the url column along.
                let url = names
                    .iter()
                    .position(|n| n.trim().eq_ignore_ascii_case("url"))?;
                Some(Columns {
                    names,
                    url,
                    name: name_at,
                })
            },
        )
}

/// A name a CSV cell may carry: anything on one line.
fn cell_name() -> BoxedStrategy<String> {
    prop_oneof![
        "[A-Za-z0-9 ._-]{0,12}",
        "[^\n\r]{0,16}",
        Just("a/b\\c.jpg".to_string()),
        Just("..".to_string()),
        Just("\"quoted, with comma\"".to_string()),
        Just("#1 front".to_string()),
    ]
    .boxed()
}

fn valid_list() -> BoxedStrategy<List> {
    let entry = (
        prop_oneof![
            20 => canonical_url(),
            1 => Just(url_of_len(MAX_URL_BYTES)),
        ],
        prop::option::of(cell_name()),
    );
    (
        prop::collection::vec(entry, 0..30),
        layout(),
        prop::option::of(columns()),
    )
        .prop_map(|(entries, layout, columns)| {
            let mut lines: Vec<String> = Vec::new();
            let mut numbers = Vec::new();
            let mut urls = Vec::new();
            let filler_at = |i: usize, lines: &mut Vec<String>| {
                if let Some(filler) = &layout.fillers[i % layout.fillers.len()] {
                    lines.push(match filler {
                        Filler::Blank(space) => space.clone(),
                        Filler::Comment(comment) => comment.clone(),
                    });
                }
            };
            filler_at(0, &mut lines);
            if let Some(columns) = &columns {
                let header: Vec<String> = columns
                    .names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| csv_field(name, layout.quotes[i % layout.quotes.len()]))
                    .collect();
                lines.push(header.join(","));
            }
            for (i, (url, name)) in entries.into_iter().enumerate() {
                // After a CSV header a `#` line is a row, not a comment: only blanks go there.
                let comment = matches!(
                    layout.fillers[(i + 1) % layout.fillers.len()],
                    Some(Filler::Comment(_))
                );
                if columns.is_none() || !comment {
                    filler_at(i + 1, &mut lines);
                }
                let (before, after) = &layout.pads[i % layout.pads.len()];
                let quote = layout.quotes[i % layout.quotes.len()];
                let line = match &columns {
                    None => {
                        urls.push((url.clone(), None));
                        url
                    }
                    Some(columns) => {
                        let cells: Vec<String> = (0..columns.names.len())
                            .map(|column| {
                                if column == columns.url {
                                    csv_field(&url, quote)
                                } else if Some(column) == columns.name {
                                    let name = name.as_deref().unwrap_or_default();
                                    csv_field(name, quote)
                                } else {
                                    csv_field("x", quote)
                                }
                            })
                            .collect();
                        urls.push((url, name.filter(|_| columns.name.is_some())));
                        cells.join(",")
                    }
                };
                lines.push(format!("{before}{line}{after}"));
                numbers.push(lines.len());
            }
            let mut text = String::new();
            if layout.bom {
                text.push('\u{feff}');
            }
            for (i, line) in lines.iter().enumerate() {
                text.push_str(line);
                if i + 1 < lines.len() || layout.trailing_newline {
                    text.push_str(if layout.crlf[i % layout.crlf.len()] {
                        "\r\n"
                    } else {
                        "\n"
                    });
                }
            }
            List {
                text,
                urls,
                lines: numbers,
                csv: columns.is_some(),
            }
        })
        .boxed()
}

#[test]
fn valid_url_lists_read_as_exactly_their_urls_in_order() {
    check(
        "valid_url_lists_read_as_exactly_their_urls_in_order",
        1500,
        (valid_list(), 0..10_000_usize, 0..4_usize),
        |(list, first_index, spare)| {
            let count = list.urls.len();
            // At the cap and above it the list is read; below it, refused.
            let inputs = urls::parse_list(&list.text, first_index, count + spare)
                .map_err(|err| TestCaseError::fail(format!("{:?}: {}", err.code, err.message)))?;
            let got: Vec<&str> = inputs.iter().map(|input| input.url.as_str()).collect();
            let want: Vec<&str> = list.urls.iter().map(|(url, _)| url.as_str()).collect();
            prop_assert_eq!(got, want, "csv: {}", list.csv);
            for (i, (input, (url, name))) in inputs.iter().zip(&list.urls).enumerate() {
                let index = first_index + i;
                // CSV cells are trimmed; a blank name falls back to the URL's last segment.
                let want = match name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                    Some(name) => sanitize_name(Some(name), index),
                    None => urls::name_of(&Url::parse(url).expect("url"), index),
                };
                prop_assert_eq!(&input.name, &want);
                safe_name(&input.name)?;
            }
            if count > 0 {
                let err = urls::parse_list(&list.text, first_index, count - 1)
                    .err()
                    .ok_or_else(|| TestCaseError::fail("list over its cap accepted"))?;
                prop_assert_eq!(err.code, ErrorCode::ResourceExhausted);
                prop_assert_eq!(
                    err.message,
                    format!("too many urls: at most {} in one list", count - 1)
                );
            }
            Ok(())
        },
    );
}

/// URLs the README's rules refuse, and a word the refusal must contain.
fn invalid_url() -> BoxedStrategy<(String, &'static str)> {
    prop_oneof![
        canonical_url().prop_map(|url| (
            url.replacen("http", "ftp", 1).replacen("ftps", "ftp", 1),
            "only http and https"
        )),
        (
            canonical_url(),
            "[a-z]{1,8}",
            prop::option::of("[a-z0-9]{0,8}")
        )
            .prop_map(|(url, user, password)| {
                let credentials = match password {
                    Some(password) => format!("{user}:{password}@"),
                    None => format!("{user}@"),
                };
                (
                    url.replacen("://", &format!("://{credentials}"), 1),
                    "credentials",
                )
            }),
        canonical_url().prop_map(|url| (url.replacen("://", "://:secret@", 1), "credentials")),
        (MAX_URL_BYTES + 1..MAX_URL_BYTES + 64)
            .prop_map(|len| (url_of_len(len), "over 2048 bytes")),
        // Relative: a path, a file name, a scheme-relative URL.
        canonical_url().prop_map(|url| {
            let path = &url[url.find("://").expect("scheme") + 3..];
            (format!("/{path}"), "invalid url")
        }),
        "[a-z]{1,8}\\.jpg".prop_map(|name| (name, "invalid url")),
        canonical_url().prop_map(|url| (
            url.replacen("https:", "", 1).replacen("http:", "", 1),
            "invalid url"
        )),
        prop::sample::select(vec![
            ("file:///etc/passwd", "only http and https"),
            ("mailto:someone@example.com", "only http and https"),
            ("javascript:alert(1)", "only http and https"),
            ("http://", "invalid url"),
            ("https://exa mple.com/", "invalid url"),
        ])
        .prop_map(|(url, why)| (url.to_string(), why)),
    ]
    .boxed()
}

#[test]
fn a_list_with_one_bad_url_is_refused_naming_its_line() {
    check(
        "a_list_with_one_bad_url_is_refused_naming_its_line",
        1500,
        (
            valid_list().prop_filter("a url to replace", |list| !list.urls.is_empty()),
            any::<prop::sample::Index>(),
            invalid_url(),
        ),
        |(list, at, (bad, why))| {
            let i = at.index(list.urls.len());
            let (good, _) = &list.urls[i];
            let line = list.lines[i];
            // At the top of a plain list, a bad "url" such as `/a/photo,url` is a CSV header.
            prop_assume!(
                list.csv || i > 0 || bad.contains("://") || !bad.to_lowercase().contains("url")
            );
            // The bad URL takes the good one's place, in the same line and cell.
            let mut lines: Vec<String> = list.text.split('\n').map(String::from).collect();
            let original = lines[line - 1].clone();
            let quoted = format!("\"{good}\"");
            lines[line - 1] = if list.csv && original.contains(&quoted) {
                original.replacen(&quoted, &csv_field(&bad, true), 1)
            } else if list.csv {
                original.replacen(good.as_str(), &csv_field(&bad, false), 1)
            } else {
                original.replacen(good.as_str(), &bad, 1)
            };
            prop_assume!(lines[line - 1] != original);
            let text = lines.join("\n");
            let err = urls::parse_list(&text, 0, list.urls.len())
                .err()
                .ok_or_else(|| TestCaseError::fail("list with a bad url accepted"))?;
            prop_assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
            let named = format!("line {line}: ");
            prop_assert!(
                err.message.starts_with(&named),
                "{:?} does not start {:?}",
                err.message,
                named
            );
            prop_assert!(
                err.message.contains(why),
                "{:?} lacks {:?}",
                err.message,
                why
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- ZIP archives

/// What one generated entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File(bool),
    Dir,
    Symlink,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
    bytes: Vec<u8>,
}

impl Entry {
    /// The name the archive stores: a directory's ends with a separator.
    fn stored_name(&self) -> String {
        match self.kind {
            Kind::Dir if !self.name.ends_with(['/', '\\']) => format!("{}/", self.name),
            _ => self.name.clone(),
        }
    }

    /// The size the central directory declares: a symlink stores its target.
    fn size(&self) -> u64 {
        match self.kind {
            Kind::Dir => 0,
            _ => self.bytes.len() as u64,
        }
    }
}

/// One component of an entry's name: mostly what archivers write, sometimes what the rules
/// refuse (about one entry in twenty), so that many archives pass and the rest fail for one
/// reason or another.
fn name_part() -> BoxedStrategy<String> {
    let ordinary = prop::sample::select(vec![
        "photo.jpg",
        "PHOTO.JPG",
        "photo",
        "photo-2.jpg",
        "a",
        "b.png",
        "x.tar.gz",
        "...",
        "é.png",
        "日本.gif",
        " space.jpg",
        "name.",
        "C",
    ]);
    let skipped = prop::sample::select(vec![
        ".",
        "",
        "__MACOSX",
        ".DS_Store",
        "._photo.jpg",
        "Thumbs.db",
        "THUMBS.DB",
        "desktop.ini",
        ".hidden.jpg",
        // Not junk: only `__MACOSX` is, in that case.
        "__macosx",
    ]);
    let refused = prop::sample::select(vec![
        "..",
        "C:",
        "c:x.jpg",
        "a\u{1}b.jpg",
        "tab\there.jpg",
        "del\u{7f}.jpg",
        "nel\u{85}.jpg",
        "line\nbreak.jpg",
    ]);
    prop_oneof![
        40 => ordinary.prop_map(String::from),
        40 => "[a-zA-Z0-9_-]{1,10}(\\.(jpg|png|JPG))?",
        10 => skipped.prop_map(String::from),
        4 => "[^\\p{Cc}/\\\\]{1,8}",
        4 => (1..300_usize).prop_map(|n| format!("{}.jpg", "é".repeat(n))),
        1 => refused.prop_map(String::from),
        1 => "[^\u{0}/\\\\]{1,8}",
    ]
    .boxed()
}

fn entry_name() -> BoxedStrategy<String> {
    (
        prop_oneof![
            98 => Just(""),
            1 => Just("/"),
            1 => Just("\\"),
        ],
        prop::collection::vec(
            (name_part(), prop::sample::select(vec!["/", "/", "\\"])),
            1..4,
        ),
    )
        .prop_map(|(lead, parts)| {
            let mut name = lead.to_string();
            for (i, (part, separator)) in parts.iter().enumerate() {
                if i > 0 {
                    name.push_str(separator);
                }
                name.push_str(part);
            }
            name
        })
        .boxed()
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        entry_name(),
        prop_oneof![
            40 => any::<bool>().prop_map(Kind::File),
            8 => Just(Kind::Dir),
            1 => Just(Kind::Symlink),
        ],
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..64),
            1 => (0..3000_usize, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        ],
    )
        .prop_map(|(name, kind, bytes)| Entry { name, kind, bytes })
}

/// The entries of one archive (names unique, as the writer requires) and the limits to plan
/// it under.
fn archive_case() -> impl Strategy<Value = (Vec<Entry>, ZipLimits)> {
    (
        prop::collection::vec(entry(), 0..16),
        // Mostly roomy limits, so the other rules decide; tight ones a quarter of the time.
        prop_oneof![1 => 1..12_usize, 3 => Just(100)],
        prop_oneof![1 => 0..4000_u64, 3 => Just(1 << 30)],
        prop_oneof![1 => 0..400_u64, 3 => Just(1 << 30)],
    )
        .prop_map(|(entries, max_entries, max_total_bytes, max_entry_bytes)| {
            let mut seen = HashSet::new();
            let entries = entries
                .into_iter()
                .filter(|e| seen.insert(e.stored_name()))
                .collect();
            let limits = ZipLimits {
                max_entries,
                max_total_bytes,
                max_entry_bytes,
                max_ratio: 100,
            };
            (entries, limits)
        })
}

fn write_zip(entries: &[Entry]) -> Result<Vec<u8>, TestCaseError> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let refused = |err: zip::result::ZipError| TestCaseError::reject(err.to_string());
    for entry in entries {
        let method = match entry.kind {
            Kind::File(true) => CompressionMethod::Deflated,
            _ => CompressionMethod::Stored,
        };
        let options = SimpleFileOptions::default().compression_method(method);
        match entry.kind {
            Kind::File(_) => {
                writer
                    .start_file(entry.name.as_str(), options)
                    .map_err(refused)?;
                writer.write_all(&entry.bytes).expect("write");
            }
            Kind::Dir => writer
                .add_directory(entry.name.as_str(), options)
                .map_err(refused)?,
            Kind::Symlink => {
                // The target is the entry's content; any bytes will not do as a path.
                let target = String::from_utf8_lossy(&entry.bytes).into_owned();
                writer
                    .add_symlink(entry.name.as_str(), target, options)
                    .map_err(refused)?;
            }
        }
    }
    Ok(writer.finish().expect("finish").into_inner())
}

/// What the README's rules make of an archive: the files to extract, as (index, name, size),
/// or the code it is refused with. Entries are judged in archive order, the first refusal
/// standing for the whole archive.
fn rules(entries: &[Entry], limits: &ZipLimits) -> Result<Vec<(usize, String)>, ErrorCode> {
    let mut files = Vec::new();
    let mut total = 0;
    for (index, entry) in entries.iter().enumerate() {
        let name = entry.stored_name();
        let parts: Vec<&str> = name.split(['/', '\\']).collect();
        let base = *parts.last().expect("one part");
        let bytes = name.as_bytes();
        // A name with `..`, an absolute path or drive letter, or control characters.
        if name.chars().any(char::is_control)
            || name.starts_with(['/', '\\'])
            || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
            || parts.contains(&"..")
        {
            return Err(ErrorCode::InvalidArgument);
        }
        // Directories are skipped: entries so marked, and names ending in a separator.
        if entry.kind == Kind::Dir || name.ends_with(['/', '\\']) {
            continue;
        }
        // An empty name: nothing if it holds nothing, else a file without a name.
        if base.is_empty() {
            if entry.size() == 0 {
                continue;
            }
            return Err(ErrorCode::InvalidArgument);
        }
        // So are `__MACOSX/`, dot-files, `Thumbs.db` and `desktop.ini`.
        if base.starts_with('.')
            || base.eq_ignore_ascii_case("thumbs.db")
            || base.eq_ignore_ascii_case("desktop.ini")
            || parts.contains(&"__MACOSX")
        {
            continue;
        }
        if entry.kind == Kind::Symlink {
            return Err(ErrorCode::InvalidArgument);
        }
        total += entry.size();
        if entry.size() > limits.max_entry_bytes
            || total > limits.max_total_bytes
            || files.len() >= limits.max_entries
        {
            return Err(ErrorCode::ResourceExhausted);
        }
        files.push((index, base.to_string()));
    }
    if files.is_empty() {
        return Err(ErrorCode::InvalidArgument);
    }
    Ok(files)
}

/// `name` with `-N` before its extension, as a planned name that had to be made unique.
fn is_suffixed(name: &str, base: &str) -> bool {
    let (stem, extension) = match base.rfind('.') {
        Some(dot) if dot > 0 && dot + 1 < base.len() => (&base[..dot], &base[dot..]),
        _ => (base, ""),
    };
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_suffix(extension))
        .and_then(|tag| tag.strip_prefix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n >= 2)
}

/// Each planned entry and its bytes, or why the archive was refused.
type Unpacked = Result<Vec<(Planned, Vec<u8>)>, Error>;

/// Opens, plans and extracts every planned entry; whatever the bytes, nothing panics, an
/// entry never passes on more than it declared, and every refusal is the client's fault.
fn unpack(bytes: Vec<u8>, limits: &ZipLimits) -> Result<Unpacked, TestCaseError> {
    let mut archive = match archive::open(Cursor::new(bytes)) {
        Ok(archive) => archive,
        Err(err) => return Ok(Err(err)),
    };
    let planned = match archive::plan(&archive, limits) {
        Ok(planned) => planned,
        Err(err) => return Ok(Err(err)),
    };
    let mut out = Vec::new();
    for entry in planned {
        let mut data = Vec::new();
        let result = archive::extract(&mut archive, &entry, |chunk| {
            data.extend_from_slice(chunk);
            Ok(())
        });
        prop_assert!(
            data.len() as u64 <= entry.size,
            "{} > {}",
            data.len(),
            entry.size
        );
        if let Err(err) = result {
            return Ok(Err(err));
        }
        out.push((entry, data));
    }
    Ok(Ok(out))
}

fn client_error(err: &Error) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            err.code,
            ErrorCode::InvalidArgument | ErrorCode::ResourceExhausted
        ),
        "{:?}: {}",
        err.code,
        err.message
    );
    Ok(())
}

#[test]
fn archives_are_planned_exactly_as_the_readme_rules_say() {
    check(
        "archives_are_planned_exactly_as_the_readme_rules_say",
        1500,
        archive_case(),
        |(entries, limits)| {
            let bytes = write_zip(&entries)?;
            let unpacked = unpack(bytes, &limits)?;
            match (rules(&entries, &limits), unpacked) {
                (Ok(files), Ok(unpacked)) => {
                    prop_assert_eq!(unpacked.len(), files.len());
                    let mut taken = HashSet::new();
                    for ((index, base), (planned, data)) in files.iter().zip(&unpacked) {
                        prop_assert_eq!(planned.index, *index);
                        prop_assert_eq!(data, &entries[*index].bytes);
                        prop_assert_eq!(planned.size, data.len() as u64);
                        let name = &planned.name;
                        safe_name(name)?;
                        // Flattened: the entry's own name, or it made unique with `-N`.
                        if base.len() <= 255 && !taken.contains(&base.to_lowercase()) {
                            prop_assert_eq!(name, base);
                        } else if base.len() <= 200 {
                            prop_assert!(is_suffixed(name, base), "{:?} from {:?}", name, base);
                        }
                        prop_assert!(
                            taken.insert(name.to_lowercase()),
                            "{:?} planned twice (ignoring case)",
                            name
                        );
                    }
                }
                (Err(code), Err(err)) => {
                    prop_assert_eq!(code, err.code, "{}", err.message);
                }
                (want, got) => prop_assert!(
                    false,
                    "rules say {:?}, plan says {:?}",
                    want,
                    got.map(|files| files.into_iter().map(|(p, _)| p.name).collect::<Vec<_>>())
                        .map_err(|err| err.message)
                ),
            }
            Ok(())
        },
    );
}

#[test]
fn corrupt_archives_are_refused_without_panicking() {
    check(
        "corrupt_archives_are_refused_without_panicking",
        1500,
        (
            archive_case(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            prop::option::of(any::<prop::sample::Index>()),
        ),
        |((entries, limits), flips, cut)| {
            let mut bytes = write_zip(&entries)?;
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if let Err(err) = unpack(bytes, &limits)? {
                client_error(&err)?;
            }
            Ok(())
        },
    );
}

#[test]
fn arbitrary_bytes_are_refused_as_archives_without_panicking() {
    let limits = ZipLimits {
        max_entries: 100,
        max_total_bytes: 1 << 20,
        max_entry_bytes: 1 << 20,
        max_ratio: 100,
    };
    check(
        "arbitrary_bytes_are_refused_as_archives_without_panicking",
        3000,
        (
            prop::option::of(prop::sample::select(vec![
                &b"PK\x03\x04"[..],
                b"PK\x05\x06",
                b"PK\x01\x02",
                b"PK\x06\x06",
            ])),
            prop::collection::vec(any::<u8>(), 0..300),
            // An end-of-central-directory record at the end, pointing anywhere.
            prop::option::of(prop::collection::vec(any::<u8>(), 18)),
        ),
        |(magic, body, end)| {
            let mut bytes = magic.unwrap_or_default().to_vec();
            bytes.extend_from_slice(&body);
            if let Some(end) = end {
                bytes.extend_from_slice(b"PK\x05\x06");
                bytes.extend_from_slice(&end);
            }
            if let Err(err) = unpack(bytes, &limits)? {
                client_error(&err)?;
            }
            Ok(())
        },
    );
}
