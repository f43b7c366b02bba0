//! Tiling: one huge image processed by many workers at once.
//!
//! A split step decodes the image once and cuts it into a grid of tiles, each stored with a
//! halo: the pixels around it that the pipeline reads to compute the tile's own (the sum of
//! the ops' radii, see [`Pipeline::tile_halo`]). A tile step runs the pipeline on one tile
//! and keeps only its core. An assembly step pastes the cores into the whole image and
//! encodes it. Every op a tile-safe pipeline may hold computes each pixel from a fixed
//! neighbourhood, clamped at the image's edges; a tile's halo is clipped at those same edges,
//! so its core comes out pixel-identical to the same region of the whole image.
//!
//! Tiles travel between workers as raw pixels ([`encode_raw`]): re-encoding them would cost
//! more than sending them, and a lossy format would break the identity.

pub use pixelmesh_pipeline::tiles::{Policy, Rect, Tile, plan, tile_size_for};

use crate::codec::Limits;
use crate::ops::{Bitmap, Pipeline};

/// The pixels of `rect`, which must lie inside `image`.
pub fn extract(image: &Bitmap, rect: Rect) -> Result<Bitmap, String> {
    let bounds = Rect {
        x: 0,
        y: 0,
        width: image.width(),
        height: image.height(),
    };
    if !bounds.contains(rect) || rect.pixels() == 0 {
        return Err(format!(
            "tile {rect:?} is outside the {}x{} image",
            image.width(),
            image.height()
        ));
    }
    let channels = image.channels();
    let stride = image.width() as usize * channels;
    let row_bytes = rect.width as usize * channels;
    let left = rect.x as usize * channels;
    let mut data = Vec::with_capacity(row_bytes * rect.height as usize);
    for row in image
        .data()
        .chunks_exact(stride)
        .skip(rect.y as usize)
        .take(rect.height as usize)
    {
        data.extend_from_slice(&row[left..left + row_bytes]);
    }
    Bitmap::new(rect.width, rect.height, image.has_alpha(), data)
        .ok_or_else(|| "tile buffer has the wrong size".to_string())
}

/// A whole image being put together from tile cores.
pub struct Canvas {
    image: Option<Bitmap>,
    width: u32,
    height: u32,
}

impl Canvas {
    /// Refuses a size over the pixel limit before allocating it.
    pub fn new(width: u32, height: u32, limits: &Limits) -> Result<Canvas, String> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels == 0 || pixels > limits.max_pixels {
            return Err(format!(
                "assembled image would be {width}x{height}, outside 1 to {} pixels",
                limits.max_pixels
            ));
        }
        Ok(Canvas {
            image: None,
            width,
            height,
        })
    }

    /// Copies `tile` in at `at`. The first tile decides whether the canvas has alpha; every
    /// tile of one image has the same layout.
    pub fn paste(&mut self, at: Rect, tile: &Bitmap) -> Result<(), String> {
        let bounds = Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        };
        if (tile.width(), tile.height()) != (at.width, at.height) || !bounds.contains(at) {
            return Err(format!(
                "tile of {}x{} does not fit {at:?} in the {}x{} image",
                tile.width(),
                tile.height(),
                self.width,
                self.height
            ));
        }
        let (width, height) = (self.width, self.height);
        let image = match &mut self.image {
            Some(image) => image,
            empty => {
                let channels = tile.channels();
                let bytes = width as usize * height as usize * channels;
                empty.insert(
                    Bitmap::new(width, height, tile.has_alpha(), vec![0; bytes])
                        .ok_or("canvas buffer has the wrong size")?,
                )
            }
        };
        if image.has_alpha() != tile.has_alpha() {
            return Err("tiles of one image disagree about alpha".into());
        }
        let channels = image.channels();
        let stride = width as usize * channels;
        let row_bytes = at.width as usize * channels;
        let left = at.x as usize * channels;
        for (dst, src) in image
            .data_mut()
            .chunks_exact_mut(stride)
            .skip(at.y as usize)
            .zip(tile.data().chunks_exact(row_bytes))
        {
            dst[left..left + row_bytes].copy_from_slice(src);
        }
        Ok(())
    }

    /// The image, once at least one tile is in; the caller checks every tile was.
    pub fn finish(self) -> Result<Bitmap, String> {
        self.image.ok_or_else(|| "no tiles to assemble".into())
    }
}

/// Runs `pipeline` on a tile's source pixels and returns its core. Stops when the task's
/// deadline passes (see [`crate::budget::with_deadline`]), saying so.
pub fn process_tile(source: Bitmap, tile: Tile, pipeline: &Pipeline) -> Result<Bitmap, String> {
    if (source.width(), source.height()) != (tile.source.width, tile.source.height)
        || !tile.source.contains(tile.core)
    {
        return Err(format!(
            "tile pixels are {}x{}, not the {:?} the task names around {:?}",
            source.width(),
            source.height(),
            tile.source,
            tile.core
        ));
    }
    let mut image = source;
    let timed_out = || crate::engine::timed_out().to_string();
    for (i, op) in pipeline.ops().iter().enumerate() {
        if op.tile_halo().is_none() {
            return Err(format!("op {} ({}) cannot run on tiles", i + 1, op.name()));
        }
        if crate::budget::expired() {
            return Err(timed_out());
        }
        image =
            crate::engine::timed_op(op.name(), i + 1, || op.apply(image)).map_err(|reason| {
                if crate::budget::expired() {
                    timed_out()
                } else {
                    format!("op {} ({}) failed: {reason}", i + 1, op.name())
                }
            })?;
    }
    extract(
        &image,
        Rect {
            x: tile.core.x - tile.source.x,
            y: tile.core.y - tile.source.y,
            ..tile.core
        },
    )
}

/// The pixel count an encoded image declares in its header, without decoding it; `None` if
/// the header cannot be read (decoding then reports why).
pub fn pixels_of(input: &[u8]) -> Option<u64> {
    if crate::codec::detect_format(input) == Some(pixelmesh_pipeline::FileFormat::Avif) {
        let (width, height, _) = crate::avif::dimensions(input)?;
        return Some(u64::from(width) * u64::from(height));
    }
    let (width, height) = image::ImageReader::new(std::io::Cursor::new(input))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    Some(u64::from(width) * u64::from(height))
}

const RAW_MAGIC: &[u8; 8] = b"PMTILE1\0";
const RAW_HEADER: usize = RAW_MAGIC.len() + 4 + 4 + 1;

/// Raw pixels with a small header (magic, width, height, channels): how tiles travel.
pub fn encode_raw(image: &Bitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(RAW_HEADER + image.data().len());
    out.extend_from_slice(RAW_MAGIC);
    out.extend_from_slice(&image.width().to_le_bytes());
    out.extend_from_slice(&image.height().to_le_bytes());
    out.push(image.channels() as u8);
    out.extend_from_slice(image.data());
    out
}

/// Reads [`encode_raw`]'s format back, checking the header against the data.
pub fn decode_raw(mut bytes: Vec<u8>) -> Result<Bitmap, String> {
    let header = bytes
        .get(..RAW_HEADER)
        .filter(|header| header.starts_with(RAW_MAGIC))
        .ok_or("tile blob is not a pixelmesh tile")?;
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (width, height, channels) = (word(8), word(12), header[16]);
    let alpha = match channels {
        3 => false,
        4 => true,
        other => return Err(format!("tile blob has {other} channels")),
    };
    bytes.drain(..RAW_HEADER);
    Bitmap::new(width, height, alpha, bytes)
        .ok_or_else(|| format!("tile blob's pixels do not fill {width}x{height}x{channels}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::FileFormat;
    use crate::{codec, engine};
    use pixelmesh_proto::{MAX_TILES, v1};

    /// Noise with structure, so every op changes something and a misplaced pixel shows.
    fn busy(width: u32, height: u32, alpha: bool) -> Bitmap {
        let channels = if alpha { 4 } else { 3 };
        let mut state = 0x9e37_79b9_u32;
        let data = (0..width * height * channels)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (pixel, channel) = (i / channels, i % channels);
                let (x, y) = (pixel % width, pixel / width);
                let smooth = (x * 7 + y * 3 + channel * 50) % 256;
                if alpha && channel == 3 {
                    // Some transparent, some partly, most opaque.
                    [0, 90, 255, 255][(x / 5 + y / 7) as usize % 4]
                } else {
                    ((smooth + (state % 64)) % 256) as u8
                }
            })
            .collect();
        Bitmap::new(width, height, alpha, data).unwrap()
    }

    fn whole(image: &Bitmap, pipeline: &Pipeline) -> Bitmap {
        pipeline
            .ops()
            .iter()
            .try_fold(image.clone(), |image, op| op.apply(image))
            .unwrap()
    }

    /// The split → tiles → assemble path, in process, with raw blobs in between.
    fn tiled(image: &Bitmap, pipeline: &Pipeline, size: u32) -> Bitmap {
        let halo = pipeline.tile_halo().expect("tile-safe pipeline");
        let tiles = plan(image.width(), image.height(), size, halo);
        let mut canvas = Canvas::new(image.width(), image.height(), &Limits::default()).unwrap();
        for tile in tiles {
            let blob = encode_raw(&extract(image, tile.source).unwrap());
            let core = process_tile(decode_raw(blob).unwrap(), tile, pipeline).unwrap();
            let blob = encode_raw(&core);
            canvas.paste(tile.core, &decode_raw(blob).unwrap()).unwrap();
        }
        canvas.finish().unwrap()
    }

    fn assert_tiled_matches_whole(text: &str) {
        let pipeline = Pipeline::from_text(text).unwrap();
        for alpha in [false, true] {
            let image = busy(203, 157, alpha);
            let expected = whole(&image, &pipeline);
            // Sizes that divide nothing, one that leaves a 1-pixel edge, and one bigger
            // than the image.
            for size in [17, 64, 101, 202, 500] {
                assert!(
                    tiled(&image, &pipeline, size) == expected,
                    "{text} alpha={alpha} tile size {size}: tiled differs from whole"
                );
            }
        }
    }

    #[test]
    fn the_plan_covers_the_image_once_with_clipped_halos() {
        let tiles = plan(10, 7, 4, 2);
        assert_eq!(tiles.len(), 3 * 2);
        let mut covered = vec![0; 70];
        for tile in &tiles {
            for y in tile.core.y..tile.core.y + tile.core.height {
                for x in tile.core.x..tile.core.x + tile.core.width {
                    covered[(y * 10 + x) as usize] += 1;
                }
            }
            assert!(tile.source.contains(tile.core));
        }
        assert!(covered.iter().all(|&n| n == 1));
        assert_eq!(
            tiles[0].source,
            Rect {
                x: 0,
                y: 0,
                width: 6,
                height: 6
            }
        );
        // The last tile: core 8..10 x 4..7, halo clipped at the right and bottom edges.
        assert_eq!(
            tiles[5],
            Tile {
                core: Rect {
                    x: 8,
                    y: 4,
                    width: 2,
                    height: 3
                },
                source: Rect {
                    x: 6,
                    y: 2,
                    width: 4,
                    height: 5
                },
            }
        );
    }

    #[test]
    fn tiled_equals_whole_for_every_tile_safe_op() {
        for text in [
            "brightness:1.3",
            "contrast:1.7",
            "gamma:0.6",
            "saturation:1.8",
            "hue:75",
            "grayscale",
            "sepia",
            "invert",
            "threshold:100",
            "blur:sigma=0.6",
            "blur:sigma=2.5",
            "format:png",
        ] {
            assert_tiled_matches_whole(text);
        }
    }

    #[test]
    fn tiled_equals_whole_for_mixed_pipelines() {
        for text in [
            "blur:sigma=1.5/brightness:1.1/blur:sigma=0.8",
            "grayscale/blur:sigma=3/contrast:1.4/invert",
            "hue:30/blur:sigma=1/saturation:0.5/format:jpeg,q=90",
        ] {
            assert_tiled_matches_whole(text);
        }
    }

    #[test]
    fn tiled_bytes_equal_whole_bytes_through_the_codec() {
        let image = busy(300, 200, false);
        let input = codec::encode(&image, FileFormat::Png, 85).unwrap();
        let pipeline = Pipeline::from_text("blur:sigma=2/brightness:1.1/format:jpeg,q=85").unwrap();
        let expected = engine::process(&input, &pipeline, &Limits::default()).unwrap();
        let decoded = codec::decode(&input, &Limits::default()).unwrap();
        let assembled = tiled(&decoded.image, &pipeline, 64);
        let output =
            engine::encode(&assembled, &pipeline, decoded.format, &Default::default()).unwrap();
        assert_eq!(output, expected);
    }

    #[test]
    fn tile_size_grows_to_keep_the_count_bounded() {
        assert_eq!(tile_size_for(1000, 1000, 100), 100);
        let size = tile_size_for(12_500, 8_000, 64);
        assert_eq!(size, 256);
        assert!(plan(12_500, 8_000, size, 0).len() <= MAX_TILES as usize);
        assert!(plan(12_500, 8_000, 128, 0).len() > MAX_TILES as usize);
    }

    #[test]
    fn policy_follows_mode_threshold_and_pipeline() {
        let safe = Pipeline::from_text("blur:sigma=1/brightness:1.1").unwrap();
        let unsafe_ = Pipeline::from_text("resize:w=100").unwrap();
        let policy = |mode| Policy {
            mode,
            above_pixels: 1000,
            tile_size: 16,
        };
        assert_eq!(policy(v1::Tiling::Auto).halo_for(&safe, 1001), Some(3));
        assert_eq!(policy(v1::Tiling::Unspecified).halo_for(&safe, 1000), None);
        assert_eq!(policy(v1::Tiling::Always).halo_for(&safe, 10), Some(3));
        assert_eq!(policy(v1::Tiling::Never).halo_for(&safe, 1_000_000), None);
        assert_eq!(
            policy(v1::Tiling::Always).halo_for(&unsafe_, 1_000_000),
            None
        );
    }

    #[test]
    fn bad_tiles_are_errors() {
        assert!(decode_raw(b"nope".to_vec()).is_err());
        let mut blob = encode_raw(&busy(4, 4, false));
        blob.pop();
        assert_eq!(
            decode_raw(blob).unwrap_err(),
            "tile blob's pixels do not fill 4x4x3"
        );
        let image = busy(8, 8, false);
        assert!(
            extract(
                &image,
                Rect {
                    x: 5,
                    y: 0,
                    width: 4,
                    height: 1
                }
            )
            .is_err()
        );
        let mut canvas = Canvas::new(8, 8, &Limits::default()).unwrap();
        assert!(
            canvas
                .paste(
                    Rect {
                        x: 6,
                        y: 6,
                        width: 4,
                        height: 4
                    },
                    &busy(4, 4, false)
                )
                .is_err()
        );
        assert!(
            canvas
                .paste(
                    Rect {
                        x: 0,
                        y: 0,
                        width: 4,
                        height: 4
                    },
                    &busy(4, 4, false)
                )
                .is_ok()
        );
        assert!(
            canvas
                .paste(
                    Rect {
                        x: 4,
                        y: 0,
                        width: 4,
                        height: 4
                    },
                    &busy(4, 4, true)
                )
                .is_err()
        );
        let limits = Limits {
            max_pixels: 10,
            ..Limits::default()
        };
        assert!(Canvas::new(4, 3, &limits).is_err());
    }

    #[test]
    fn tiles_stop_at_the_deadline_too() {
        use crate::budget::{Deadline, with_deadline};
        use std::time::{Duration, Instant};
        let image = Bitmap::new(32, 32, false, vec![90; 32 * 32 * 3]).unwrap();
        let rect = Rect {
            x: 0,
            y: 0,
            width: 32,
            height: 32,
        };
        let tile = Tile {
            core: rect,
            source: rect,
        };
        let p = Pipeline::from_text("blur:sigma=2/grayscale").unwrap();
        let past = Deadline::since(Instant::now(), Duration::from_millis(0));
        assert_eq!(
            with_deadline(Some(past), || process_tile(image.clone(), tile, &p)),
            Err("processing took longer than the limit of 0 s per task".to_string())
        );
        assert_eq!(process_tile(image.clone(), tile, &p), Ok(image));
    }
}
