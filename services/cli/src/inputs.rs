//! What `process` was given, as the images to upload and where each output goes.
//!
//! A file lands at `<out>/<its name>`; a folder's images at `<out>/<path inside the folder>`,
//! so the outputs mirror the tree; a ZIP's at `<out>/<zip name without .zip>/<entry name>`.
//! In folders, only image extensions are taken, and hidden files and folders (`.name`) are
//! skipped, so the output folder's own state is never an input.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Extensions taken from folders: the formats the filters decode.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif",
];

/// One upload: an image file, or a ZIP the gateway unpacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub path: PathBuf,
    /// Where its output goes under `--out`, `/`-separated: for an image its own relative
    /// path (the extension changes with the output's format); for a ZIP the folder its
    /// entries go in.
    pub relative: String,
    pub archive: bool,
}

/// The inputs of `paths`, in a stable order; two inputs landing on the same output path
/// are refused, as are paths that are neither files nor folders.
pub fn collect(paths: &[PathBuf], out: &Path) -> anyhow::Result<Vec<Input>> {
    let out = std::fs::canonicalize(out).ok();
    let mut found = BTreeMap::new();
    let mut add = |input: Input| -> anyhow::Result<()> {
        let key = stem_key(&input.relative);
        if let Some(other) = found.insert(key, input.clone()) {
            bail!(
                "{} and {} would both write {} in the output folder",
                other.path.display(),
                input.path.display(),
                input.relative
            );
        }
        Ok(())
    };
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let mut any = false;
            for entry in walkdir::WalkDir::new(path)
                .follow_links(false)
                .sort_by_file_name()
                .into_iter()
                // Not into hidden folders, nor into the output folder when it is inside.
                .filter_entry(|entry| {
                    entry.depth() == 0
                        || !(is_hidden(entry.file_name())
                            || entry.file_type().is_dir()
                                && out.as_deref().is_some_and(|out| {
                                    entry.path().canonicalize().ok().as_deref() == Some(out)
                                }))
                })
            {
                let entry = entry.with_context(|| format!("walking {}", path.display()))?;
                if !entry.file_type().is_file() || !is_image(entry.path()) {
                    continue;
                }
                let relative = entry
                    .path()
                    .strip_prefix(path)
                    .expect("walkdir yields paths under its root");
                add(Input {
                    path: entry.path().to_path_buf(),
                    relative: slashed(relative)?,
                    archive: false,
                })?;
                any = true;
            }
            if !any {
                bail!("{} holds no images", path.display());
            }
        } else if meta.is_file() {
            let name = path
                .file_name()
                .with_context(|| format!("{} has no file name", path.display()))?;
            let archive = Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("zip"));
            let relative = if archive {
                slashed(Path::new(&Path::new(name).with_extension("")))?
            } else {
                slashed(Path::new(name))?
            };
            add(Input {
                path: path.clone(),
                relative,
                archive,
            })?;
        } else {
            bail!("{} is neither a file nor a folder", path.display());
        }
    }
    if found.is_empty() {
        bail!("no inputs: name files, folders or ZIPs of images");
    }
    Ok(found.into_values().collect())
}

/// Two images whose names differ only in extension would write the same output once their
/// format changes: they count as the same.
fn stem_key(relative: &str) -> String {
    match relative.rsplit_once('.') {
        Some((stem, _)) if !stem.ends_with('/') && !stem.is_empty() => stem.to_lowercase(),
        _ => relative.to_lowercase(),
    }
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|name| name.starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// A relative path with `/` between its parts; refused unless it is valid UTF-8 (the
/// gateway names images in UTF-8).
fn slashed(path: &Path) -> anyhow::Result<String> {
    path.components()
        .map(|part| {
            part.as_os_str()
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 name", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(|parts| parts.join("/"))
}

/// Where an image's output goes: its relative path with the extension of the output's
/// format, unless the input's already names that format (`.jpeg` stays `.jpeg`).
pub fn output_path(relative: &str, content_type: &str) -> String {
    let Some(extension) = extension_of(content_type) else {
        return relative.to_string();
    };
    let (stem, current) = match relative.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') && !stem.is_empty() && !stem.ends_with('/') => {
            (stem, Some(ext.to_ascii_lowercase()))
        }
        _ => (relative, None),
    };
    let same = current.as_deref().is_some_and(|current| {
        current == extension
            || (extension == "jpg" && current == "jpeg")
            || (extension == "tif" && current == "tiff")
    });
    if same {
        relative.to_string()
    } else {
        format!("{stem}.{extension}")
    }
}

/// An image's name as a relative path inside the download folder: its parts that are plain
/// names, or `image-<index>` when none is.
pub fn contained(name: &str, index: u32) -> String {
    let parts: Vec<&str> = name
        .split(['/', '\\'])
        .filter(|part| !part.is_empty() && *part != "." && *part != "..")
        .collect();
    if parts.is_empty() {
        format!("image-{index}")
    } else {
        parts.join("/")
    }
}

fn extension_of(content_type: &str) -> Option<&'static str> {
    Some(match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "image/avif" => "avif",
        "image/tiff" => "tif",
        "image/bmp" => "bmp",
        "application/json" => "json",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_mirror_their_tree_and_skip_what_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        std::fs::create_dir_all(root.join("trip/day 1")).unwrap();
        std::fs::create_dir_all(root.join(".cache")).unwrap();
        for file in [
            "b.JPG",
            "a.png",
            "trip/day 1/c.webp",
            "notes.txt",
            ".hidden.png",
        ] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        std::fs::write(root.join(".cache/d.png"), b"x").unwrap();
        let single = dir.path().join("single.jpeg");
        std::fs::write(&single, b"x").unwrap();
        let zip = dir.path().join("more.zip");
        std::fs::write(&zip, b"x").unwrap();

        let out = dir.path().join("out");
        let inputs = collect(&[root.clone(), single, zip], &out).unwrap();
        let relative: Vec<(&str, bool)> = inputs
            .iter()
            .map(|input| (input.relative.as_str(), input.archive))
            .collect();
        assert_eq!(
            relative,
            [
                ("a.png", false),
                ("b.JPG", false),
                ("more", true),
                ("single.jpeg", false),
                ("trip/day 1/c.webp", false),
            ]
        );

        // The output folder inside an input folder is not an input.
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("out/a.png"), b"x").unwrap();
        let inputs = collect(std::slice::from_ref(&root), &root.join("out")).unwrap();
        assert_eq!(inputs.len(), 3);
    }

    #[test]
    fn clashes_and_empty_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["a/x.png", "b/x.jpg"] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let err = collect(
            &[dir.path().join("a"), dir.path().join("b")],
            &dir.path().join("out"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("would both write x.jpg"), "{err}");
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let err = collect(&[dir.path().join("empty")], dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds no images"), "{err}");
        let err = collect(&[dir.path().join("missing.png")], dir.path()).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn names_from_the_server_stay_inside_the_folder() {
        assert_eq!(contained("a/b.png", 0), "a/b.png");
        assert_eq!(contained("../../etc/passwd", 1), "etc/passwd");
        assert_eq!(contained("/abs/x.jpg", 2), "abs/x.jpg");
        assert_eq!(contained("..", 3), "image-3");
    }

    #[test]
    fn outputs_take_their_format_extension() {
        assert_eq!(output_path("a/b.jpg", "image/webp"), "a/b.webp");
        assert_eq!(output_path("a/b.jpeg", "image/jpeg"), "a/b.jpeg");
        assert_eq!(output_path("a/b.PNG", "image/png"), "a/b.PNG");
        assert_eq!(output_path("a/noext", "image/png"), "a/noext.png");
        assert_eq!(output_path("a.b/noext", "image/png"), "a.b/noext.png");
        assert_eq!(output_path("a/b.jpg", "image/x-unknown"), "a/b.jpg");
    }
}
