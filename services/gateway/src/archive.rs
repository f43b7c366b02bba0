//! Reading a user's ZIP of images, safely. The gateway spools the upload to a temp file, then on
//! a blocking thread (the `zip` crate is synchronous) it [`open`]s it, [`plan`]s it — the whole
//! central directory is checked before a single byte is inflated, so a bad archive is refused
//! whole — and [`extract`]s each planned entry as a bounded stream.
//!
//! Entries that are not images are not refused here: they become per-image errors later.

use std::collections::HashSet;
use std::io::{self, Read, Seek};

use pixelmesh_proto::Error;
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

/// Limits on what one archive may unpack to. They come from the gateway's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipLimits {
    /// Most file entries (directories and skipped junk do not count).
    pub max_entries: usize,
    /// Largest sum of the entries' declared uncompressed sizes.
    pub max_total_bytes: u64,
    /// Largest declared uncompressed size of one entry.
    pub max_entry_bytes: u64,
    /// Highest uncompressed / compressed ratio of an entry above [`RATIO_CHECK_MIN_BYTES`].
    pub max_ratio: u64,
}

/// One entry [`plan`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index of the entry in the archive.
    pub index: usize,
    /// The entry's file name with its folders dropped, unique within the archive (ignoring case).
    pub name: String,
    /// The declared uncompressed size; [`extract`] refuses an entry that inflates to more or less.
    pub size: u64,
}

/// Entries at most this large skip the ratio check: a small blank PNG or text file legitimately
/// compresses very well and costs nothing to inflate.
pub const RATIO_CHECK_MIN_BYTES: u64 = 1024 * 1024;

/// Longest name, in bytes, that common file systems accept for one path component.
const MAX_NAME_BYTES: usize = 255;

/// How much of an entry [`extract`] holds at once.
const CHUNK_BYTES: usize = 64 * 1024;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Opens a spooled upload as a ZIP archive, reading only its central directory.
pub fn open<R: Read + Seek>(reader: R) -> Result<ZipArchive<R>, Error> {
    ZipArchive::new(reader).map_err(|err| match err {
        ZipError::Io(err) if !is_content_error(&err) => {
            Error::internal(format!("reading zip archive: {err}"))
        }
        err => Error::invalid(format!("not a zip archive: {err}")),
    })
}

/// Reads the central directory and checks the whole archive before anything is extracted.
/// Returns the file entries to extract, in archive order, with flattened unique names.
pub fn plan<R: Read + Seek>(
    archive: &ZipArchive<R>,
    limits: &ZipLimits,
) -> Result<Vec<Planned>, Error> {
    let mut planned = Vec::new();
    let mut taken = HashSet::new();
    let mut total_bytes: u64 = 0;
    for index in 0..archive.len() {
        let entry = archive
            .by_index_data(index)
            .map_err(|err| Error::invalid(format!("zip entry {index}: {err}")))?;
        let name = entry
            .name()
            .map_err(|err| Error::invalid(format!("zip entry {index}: {err}")))?;
        let refuse = |problem: &str| Error::invalid(format!("zip entry {name:?}: {problem}"));

        if let Err(problem) = check_path(&name) {
            return Err(refuse(problem));
        }
        let file_type = entry.unix_mode().map(|mode| mode & S_IFMT);
        let base = base_name(&name);
        if entry.is_dir() || file_type == Some(S_IFDIR) || (base.is_empty() && entry.size() == 0) {
            continue;
        }
        if base.is_empty() {
            return Err(refuse("entry has no file name"));
        }
        if is_junk(&name, base) {
            continue;
        }
        match file_type {
            Some(S_IFLNK) => return Err(refuse("symbolic links are not allowed")),
            Some(kind) if kind != 0 && kind != S_IFREG => {
                return Err(refuse("not a regular file"));
            }
            _ => {}
        }
        if entry.encrypted() {
            return Err(refuse("encrypted entries are not supported"));
        }
        let method = entry.compression();
        if method != CompressionMethod::Stored && method != CompressionMethod::Deflated {
            // `zip` names the methods it knows of; the others only show their number in Debug.
            let known = method.to_string();
            let shown = if known == "Unknown" {
                format!("{method:?}")
            } else {
                known.to_lowercase()
            };
            return Err(refuse(&format!(
                "unsupported compression method {shown}, use stored or deflate"
            )));
        }

        let size = entry.size();
        if size > limits.max_entry_bytes {
            return Err(Error::too_large(format!(
                "zip entry {name:?}: {size} bytes is over the limit of {} bytes per file",
                limits.max_entry_bytes
            )));
        }
        total_bytes = total_bytes.saturating_add(size);
        if total_bytes > limits.max_total_bytes {
            return Err(Error::too_large(format!(
                "zip archive unpacks to more than {} bytes",
                limits.max_total_bytes
            )));
        }
        // Compared by multiplication so a compressed size of zero needs no special case.
        let compressed = entry.compressed_size();
        if size > RATIO_CHECK_MIN_BYTES && size > compressed.saturating_mul(limits.max_ratio) {
            return Err(refuse(&format!(
                "compresses {size} bytes into {compressed}, looks like a zip bomb"
            )));
        }
        if planned.len() >= limits.max_entries {
            return Err(Error::too_large(format!(
                "zip archive holds more than {} files",
                limits.max_entries
            )));
        }
        let (stem, extension) = split_extension(base);
        planned.push(Planned {
            index,
            name: unique_name(stem, extension, &mut taken),
            size,
        });
    }
    if planned.is_empty() {
        return Err(Error::invalid("zip archive holds no files"));
    }
    Ok(planned)
}

/// Streams one planned entry's bytes to `sink` in chunks. It never passes on more than
/// `planned.size` bytes, and fails if the entry inflates to a different size than it declared
/// or its CRC is wrong: a lying header is an error, not an allocation.
pub fn extract<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    planned: &Planned,
    mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let name = &planned.name;
    let file = archive.by_index(planned.index).map_err(|err| match err {
        ZipError::Io(err) => io_error(name, err),
        err => Error::invalid(format!("zip entry {name:?}: {err}")),
    })?;
    // `zip` bounds the output by the declared size too; this bound must not depend on that.
    // One byte past the size is enough to tell a lying header.
    let mut reader = file.take(planned.size.saturating_add(1));
    let mut buffer = vec![0; CHUNK_BYTES];
    let mut read: u64 = 0;
    loop {
        // The last read, which returns 0, is also when `zip` checks the CRC.
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_error(name, err)),
        };
        read += n as u64;
        if read > planned.size {
            return Err(Error::invalid(format!(
                "zip entry {name:?}: inflates to more than its declared {} bytes",
                planned.size
            )));
        }
        sink(&buffer[..n])?;
    }
    if read < planned.size {
        return Err(Error::invalid(format!(
            "zip entry {name:?}: holds {read} bytes, not its declared {}",
            planned.size
        )));
    }
    Ok(())
}

/// Gives a file name with `stem` and `extension` (without its dot, may be empty) that is not
/// in `taken` and claims it: `photo.jpg`, then `photo-2.jpg`, `photo-3.jpg`… `taken` holds
/// lowercased names, so names differing only in case collide, as they do on macOS and Windows.
/// The name is capped at 255 bytes, keeping the extension when it fits.
pub(crate) fn unique_name(stem: &str, extension: &str, taken: &mut HashSet<String>) -> String {
    // Linear probing: the number of same-named files is bounded by the job's file limit.
    let mut suffix = 1_u64;
    loop {
        let tag = if suffix == 1 {
            String::new()
        } else {
            format!("-{suffix}")
        };
        let name = fit_name(stem, &tag, extension);
        if taken.insert(name.to_lowercase()) {
            return name;
        }
        suffix += 1;
    }
}

/// `stem` + `tag` + `.extension`, cutting `stem` (on a char boundary) to keep the whole within
/// [`MAX_NAME_BYTES`], and dropping the extension only when it alone would not leave room.
fn fit_name(stem: &str, tag: &str, extension: &str) -> String {
    let mut dotted = if extension.is_empty() {
        String::new()
    } else {
        format!(".{extension}")
    };
    let mut room = MAX_NAME_BYTES.saturating_sub(tag.len() + dotted.len());
    if room == 0 {
        dotted.clear();
        room = MAX_NAME_BYTES.saturating_sub(tag.len());
    }
    let cut = floor_char_boundary(stem, room);
    format!("{}{tag}{dotted}", &stem[..cut])
}

/// The largest char boundary of `text` at or below `index` (`str::floor_char_boundary` is
/// newer than our minimum Rust version).
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    (0..=index)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// Splits `photo.jpg` into `("photo", "jpg")`; a name without a usable dot has no extension.
pub(crate) fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 && dot + 1 < name.len() => (&name[..dot], &name[dot + 1..]),
        _ => (name, ""),
    }
}

/// The last component of a path, splitting on both separators: Windows zip tools write `\`.
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Refuses names that could escape a directory if anything ever joined them to one.
fn check_path(name: &str) -> Result<(), &'static str> {
    if name.chars().any(char::is_control) {
        return Err("name holds control characters");
    }
    if name.starts_with(['/', '\\']) {
        return Err("path is absolute");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("path starts with a drive letter");
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return Err("path leaves the archive");
    }
    Ok(())
}

/// Files the archiver added, not the user: macOS Finder writes `__MACOSX/` (resource forks),
/// `._name` (AppleDouble) and `.DS_Store`; Windows Explorer writes `Thumbs.db` and
/// `desktop.ini`. Each would otherwise come back as a failed image the user never sent.
fn is_junk(name: &str, base: &str) -> bool {
    base.starts_with('.')
        || base.eq_ignore_ascii_case("thumbs.db")
        || base.eq_ignore_ascii_case("desktop.ini")
        || name.split(['/', '\\']).any(|part| part == "__MACOSX")
}

/// Whether an I/O error comes from the archive's content rather than from the spool file.
fn is_content_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
    )
}

fn io_error(name: &str, err: io::Error) -> Error {
    if is_content_error(&err) {
        Error::invalid(format!("zip entry {name:?}: {err}"))
    } else {
        Error::internal(format!("reading zip entry {name:?}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use pixelmesh_proto::ErrorCode;
    use zip::ZipWriter;
    use zip::write::SimpleFileOptions;

    use super::*;

    const LIMITS: ZipLimits = ZipLimits {
        max_entries: 100,
        max_total_bytes: 64 * 1024 * 1024,
        max_entry_bytes: 32 * 1024 * 1024,
        max_ratio: 100,
    };

    fn stored() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored)
    }

    fn deflated() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
    }

    /// A zip of `(name, bytes)` files.
    fn zip_of<N: AsRef<str>, B: AsRef<[u8]>>(
        files: &[(N, B)],
        options: SimpleFileOptions,
    ) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in files {
            writer
                .start_file(name.as_ref(), options)
                .expect("start file");
            writer.write_all(bytes.as_ref()).expect("write file");
        }
        writer.finish().expect("finish zip").into_inner()
    }

    fn plan_bytes(bytes: Vec<u8>, limits: &ZipLimits) -> Result<Vec<Planned>, Error> {
        plan(&open(Cursor::new(bytes))?, limits)
    }

    fn names(planned: &[Planned]) -> Vec<&str> {
        planned.iter().map(|p| p.name.as_str()).collect()
    }

    fn refused(bytes: Vec<u8>, limits: &ZipLimits) -> Error {
        match plan_bytes(bytes, limits) {
            Ok(planned) => panic!("archive accepted: {:?}", names(&planned)),
            Err(err) => err,
        }
    }

    /// Offset of the first central directory header.
    fn central_header(bytes: &[u8]) -> usize {
        bytes
            .windows(4)
            .position(|w| w == b"PK\x01\x02")
            .expect("central directory header")
    }

    #[test]
    fn flattens_folders_and_makes_names_unique() {
        let bytes = zip_of(
            &[
                ("a/b/photo.jpg", b"1"),
                ("photo.jpg", b"2"),
                ("c\\PHOTO.JPG", b"3"),
                ("notes", b"4"),
                ("d/notes", b"5"),
            ],
            stored(),
        );
        let planned = plan_bytes(bytes, &LIMITS).expect("plan");
        assert_eq!(
            names(&planned),
            [
                "photo.jpg",
                "photo-2.jpg",
                "PHOTO-3.JPG",
                "notes",
                "notes-2"
            ]
        );
        assert_eq!(planned[1].index, 1);
        assert_eq!(planned[1].size, 1);
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary_keeping_the_extension() {
        let long = format!("{}.jpg", "é".repeat(200));
        let bytes = zip_of(
            &[(format!("a/{long}"), b"1"), (format!("b/{long}"), b"2")],
            stored(),
        );
        let planned = plan_bytes(bytes, &LIMITS).expect("plan");
        for p in &planned {
            assert!(p.name.len() <= MAX_NAME_BYTES, "{} bytes", p.name.len());
        }
        assert!(planned[0].name.ends_with("é.jpg"));
        assert!(planned[1].name.ends_with("-2.jpg"));
        assert_ne!(planned[0].name, planned[1].name);
    }

    #[test]
    fn refuses_names_that_leave_the_archive() {
        for (name, problem) in [
            ("../x.jpg", "path leaves the archive"),
            ("a/../../x.jpg", "path leaves the archive"),
            ("a\\..\\x.jpg", "path leaves the archive"),
            ("/etc/x.jpg", "path is absolute"),
            ("\\x.jpg", "path is absolute"),
            ("C:x.jpg", "path starts with a drive letter"),
            ("c:/x.jpg", "path starts with a drive letter"),
            ("a\u{1}b.jpg", "name holds control characters"),
        ] {
            let bytes = zip_of(&[("ok.jpg", b"1"), (name, b"2")], stored());
            let err = refused(bytes, &LIMITS);
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{name}");
            assert_eq!(err.message, format!("zip entry {name:?}: {problem}"));
        }
    }

    #[test]
    fn refuses_a_nul_in_a_name() {
        // The writer refuses NUL in names, so patch one into the central directory's copy.
        let mut bytes = zip_of(&[("abc.jpg", b"1")], stored());
        let name_at = central_header(&bytes) + 46;
        assert_eq!(&bytes[name_at..name_at + 3], b"abc");
        bytes[name_at + 1] = 0;
        let err = refused(bytes, &LIMITS);
        assert!(
            err.message.contains("control characters"),
            "{}",
            err.message
        );
    }

    #[test]
    fn refuses_symlinks() {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .add_symlink("link.jpg", "/etc/passwd", stored())
            .expect("symlink");
        let bytes = writer.finish().expect("finish").into_inner();
        let err = refused(bytes, &LIMITS);
        assert_eq!(
            err.message,
            "zip entry \"link.jpg\": symbolic links are not allowed"
        );
    }

    #[test]
    fn refuses_encrypted_entries() {
        // Setting the encryption flag in the central directory is what a reader goes by.
        let mut bytes = zip_of(&[("secret.jpg", b"1")], stored());
        let flags_at = central_header(&bytes) + 8;
        bytes[flags_at] |= 1;
        let err = refused(bytes, &LIMITS);
        assert!(err.message.contains("encrypted"), "{}", err.message);
    }

    #[test]
    fn refuses_unsupported_compression_methods() {
        // Method 12 is bzip2, which this build cannot inflate.
        let mut bytes = zip_of(&[("photo.jpg", b"1")], stored());
        let method_at = central_header(&bytes) + 10;
        bytes[method_at..method_at + 2].copy_from_slice(&12_u16.to_le_bytes());
        let err = refused(bytes, &LIMITS);
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(
            err.message.contains("unsupported compression method bzip2"),
            "{}",
            err.message
        );
    }

    #[test]
    fn refuses_too_many_entries() {
        let files: Vec<(String, &[u8])> = (0..4).map(|i| (format!("{i}.jpg"), &b"x"[..])).collect();
        let limits = ZipLimits {
            max_entries: 3,
            ..LIMITS
        };
        let err = refused(zip_of(&files, stored()), &limits);
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        assert_eq!(err.message, "zip archive holds more than 3 files");
        assert_eq!(
            plan_bytes(zip_of(&files[..3], stored()), &limits)
                .expect("three fit")
                .len(),
            3
        );
    }

    #[test]
    fn refuses_archives_over_the_size_limits() {
        let bytes = zip_of(&[("a.jpg", [1; 600]), ("b.jpg", [2; 600])], stored());
        let total = ZipLimits {
            max_total_bytes: 1000,
            ..LIMITS
        };
        let err = refused(bytes.clone(), &total);
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        assert_eq!(err.message, "zip archive unpacks to more than 1000 bytes");

        let entry = ZipLimits {
            max_entry_bytes: 500,
            ..LIMITS
        };
        let err = refused(bytes, &entry);
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        assert!(err.message.starts_with("zip entry \"a.jpg\": 600 bytes"));
    }

    #[test]
    fn refuses_a_highly_compressed_entry() {
        let zeros = vec![0; 20 * 1024 * 1024];
        let bytes = zip_of(&[("bomb.jpg", &zeros)], deflated());
        assert!(
            bytes.len() < 100 * 1024,
            "deflated to {} bytes",
            bytes.len()
        );
        let err = refused(bytes, &LIMITS);
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(
            err.message.contains("looks like a zip bomb"),
            "{}",
            err.message
        );

        // Small entries compress as well as they like.
        let bytes = zip_of(&[("blank.png", vec![0; 100_000])], deflated());
        assert_eq!(plan_bytes(bytes, &LIMITS).expect("small").len(), 1);
    }

    #[test]
    fn skips_directories_and_archiver_junk() {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        writer.add_directory("photos/", stored()).expect("dir");
        for (name, bytes) in [
            ("photos/a.jpg", &b"a"[..]),
            ("__MACOSX/photos/._a.jpg", b"junk"),
            ("photos/.DS_Store", b"junk"),
            ("photos/._b.jpg", b"junk"),
            ("photos/Thumbs.db", b"junk"),
            ("photos/b.jpg", b"b"),
        ] {
            writer.start_file(name, stored()).expect("start");
            writer.write_all(bytes).expect("write");
        }
        let bytes = writer.finish().expect("finish").into_inner();
        let planned = plan_bytes(bytes, &LIMITS).expect("plan");
        assert_eq!(names(&planned), ["a.jpg", "b.jpg"]);
    }

    #[test]
    fn refuses_archives_without_files() {
        let empty = ZipWriter::new(Cursor::new(Vec::new()))
            .finish()
            .expect("finish")
            .into_inner();
        assert_eq!(
            refused(empty, &LIMITS).message,
            "zip archive holds no files"
        );

        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        writer.add_directory("only/", stored()).expect("dir");
        writer.start_file(".DS_Store", stored()).expect("start");
        let junk_only = writer.finish().expect("finish").into_inner();
        assert_eq!(
            refused(junk_only, &LIMITS).message,
            "zip archive holds no files"
        );
    }

    #[test]
    fn refuses_bytes_that_are_not_a_zip() {
        let err = open(Cursor::new(b"GIF89a certainly not a zip file".repeat(100)))
            .map(|_| ())
            .expect_err("garbage opened");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(
            err.message.starts_with("not a zip archive: "),
            "{}",
            err.message
        );
        assert!(open(Cursor::new(Vec::new())).is_err());
    }

    #[test]
    fn extract_streams_exactly_the_bytes() {
        let big: Vec<u8> = (0..200_000_u32).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = zip_of(
            &[("a/big.png", big.as_slice()), ("empty.png", &b""[..])],
            deflated(),
        );
        let mut archive = open(Cursor::new(bytes)).expect("open");
        let planned = plan(&archive, &LIMITS).expect("plan");

        let mut chunks = Vec::new();
        extract(&mut archive, &planned[0], |chunk| {
            chunks.push(chunk.to_vec());
            Ok(())
        })
        .expect("extract");
        assert!(chunks.len() > 1, "one chunk of {} bytes", chunks[0].len());
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        assert_eq!(chunks.concat(), big);

        let mut out = Vec::new();
        extract(&mut archive, &planned[1], |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .expect("extract empty");
        assert!(out.is_empty());
    }

    #[test]
    fn extract_passes_on_sink_errors() {
        let bytes = zip_of(&[("a.png", b"data")], stored());
        let mut archive = open(Cursor::new(bytes)).expect("open");
        let planned = plan(&archive, &LIMITS).expect("plan");
        let err = extract(&mut archive, &planned[0], |_| {
            Err(Error::unavailable("storage is down"))
        })
        .expect_err("sink error lost");
        assert_eq!(err.code, ErrorCode::Unavailable);
    }

    #[test]
    fn extract_refuses_an_entry_larger_than_declared() {
        for options in [stored(), deflated()] {
            let data = vec![b'x'; 300_000];
            let mut bytes = zip_of(&[("liar.png", &data)], options);
            // Declare 1000 bytes in the central directory, which is what readers trust.
            let size_at = central_header(&bytes) + 24;
            bytes[size_at..size_at + 4].copy_from_slice(&1000_u32.to_le_bytes());
            let mut archive = open(Cursor::new(bytes)).expect("open");
            let planned = plan(&archive, &LIMITS).expect("plan");
            assert_eq!(planned[0].size, 1000);

            let mut passed_on = 0;
            let err = extract(&mut archive, &planned[0], |chunk| {
                passed_on += chunk.len();
                Ok(())
            })
            .expect_err("lying entry extracted");
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
            assert!(passed_on <= 1000, "passed on {passed_on} bytes");
        }
    }

    #[test]
    fn extract_refuses_a_wrong_crc() {
        let mut bytes = zip_of(&[("a.png", b"some image bytes")], stored());
        let crc_at = central_header(&bytes) + 16;
        bytes[crc_at] ^= 0xff;
        let mut archive = open(Cursor::new(bytes)).expect("open");
        let planned = plan(&archive, &LIMITS).expect("plan");
        let err = extract(&mut archive, &planned[0], |_| Ok(())).expect_err("bad crc accepted");
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    }

    #[test]
    fn unique_names_ignore_case_and_fit_the_limit() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name("a", "jpg", &mut taken), "a.jpg");
        assert_eq!(unique_name("A", "JPG", &mut taken), "A-2.JPG");
        assert_eq!(unique_name("a", "", &mut taken), "a");
        let long_ext = "x".repeat(300);
        let name = unique_name("a", &long_ext, &mut taken);
        assert_eq!(name, "a-2", "an extension that cannot fit is dropped");
        assert_eq!(split_extension(".hidden"), (".hidden", ""));
        assert_eq!(split_extension("a.tar.gz"), ("a.tar", "gz"));
        assert_eq!(split_extension("a."), ("a.", ""));
    }
}
