//! Test inputs shared by the unit tests: the corpus photographs beside the repository
//! (`../shared/corpus`, which CI has too; a missing corpus fails the test, never skips it) and
//! synthetic images where a photo's content does not matter: a gradient, and a red disc on
//! green (what the tests' segmentation model is built to find).

use std::path::PathBuf;

use crate::Bitmap;

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus"
    ))
}

/// One corpus file's bytes.
pub fn corpus(name: &str) -> Vec<u8> {
    let path = corpus_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (the shared corpus must be beside the repository)",
            path.display()
        )
    })
}

/// Every corpus file with its name, images and anything else alike, in name order.
pub fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (the shared corpus must be beside the repository)",
            dir.display()
        )
    });
    let mut files: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .filter(|entry| entry.path().is_file())
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).expect("corpus file"))
        })
        .collect();
    files.sort();
    assert!(files.len() > 1, "{}: empty corpus", dir.display());
    files
}

/// A smooth `width` x `height` gradient: every channel varies, alpha too, so alpha handling
/// shows in the output.
pub fn gradient(width: u32, height: u32, alpha: bool) -> Bitmap {
    let channels = if alpha { 4 } else { 3 };
    let data = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            [
                (x * 3) as u8,
                (y * 5) as u8,
                ((x ^ y) * 2) as u8,
                (x + y) as u8,
            ][..channels]
                .to_vec()
        })
        .collect();
    Bitmap::new(width, height, alpha, data).expect("gradient")
}

/// A corpus photo decoded to RGB.
#[cfg(test)]
pub fn corpus_photo(name: &str) -> Bitmap {
    decode(name, &corpus(name))
}

/// A test photo from `tests/data` (see its SOURCES.md), decoded to RGB.
#[cfg(test)]
pub fn fixture_photo(name: &str) -> Bitmap {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    decode(name, &bytes)
}

#[cfg(test)]
fn decode(name: &str, bytes: &[u8]) -> Bitmap {
    let rgb = image::load_from_memory(bytes)
        .unwrap_or_else(|err| panic!("{name}: {err}"))
        .to_rgb8();
    let (width, height) = rgb.dimensions();
    Bitmap::new(width, height, false, rgb.into_raw()).expect("decoded size")
}

/// A red disc of `radius` centred on a green `width`x`height` RGB image.
pub fn disc(width: u32, height: u32, radius: f64) -> Bitmap {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let dx = f64::from(x) + 0.5 - f64::from(width) / 2.0;
            let dy = f64::from(y) + 0.5 - f64::from(height) / 2.0;
            data.extend_from_slice(if dx.hypot(dy) < radius {
                &[220, 30, 40]
            } else {
                &[40, 160, 60]
            });
        }
    }
    Bitmap::new(width, height, false, data).expect("the disc's buffer fits its size")
}
