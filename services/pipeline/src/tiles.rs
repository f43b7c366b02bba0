//! Tiling plans: which images a job splits into tiles, and where the tiles and their halos
//! lie. The scheduler decides with [`Policy`] at submit; the filter cuts, processes and
//! stitches the pixels (its `tiles` module).

use pixelmesh_proto::{MAX_TILES, v1};

use crate::budget::Estimate;
use crate::ops::Pipeline;

/// A rectangle of image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn from_proto(rect: Option<&v1::Rect>) -> Rect {
        let rect = rect.cloned().unwrap_or_default();
        Rect {
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
        }
    }

    pub fn to_proto(self) -> v1::Rect {
        v1::Rect {
            x: self.x,
            y: self.y,
            width: self.width,
            height: self.height,
        }
    }

    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Whether `inner` lies inside `self`.
    pub fn contains(self, inner: Rect) -> bool {
        inner.x >= self.x
            && inner.y >= self.y
            && u64::from(inner.x) + u64::from(inner.width)
                <= u64::from(self.x) + u64::from(self.width)
            && u64::from(inner.y) + u64::from(inner.height)
                <= u64::from(self.y) + u64::from(self.height)
    }
}

/// One tile of the plan: the pixels it produces and the pixels it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub core: Rect,
    /// The core grown by the halo on every side, clipped to the image.
    pub source: Rect,
}

/// How a job asks for tiling, with the scheduler's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub mode: v1::Tiling,
    pub above_pixels: u64,
    pub tile_size: u32,
}

impl Policy {
    pub fn from_task(task: &v1::Task) -> Policy {
        Policy {
            mode: task.tiling(),
            above_pixels: task.tile_above_pixels,
            tile_size: task.tile_size,
        }
    }

    /// The halo to split a `pixels`-pixel image with, or `None` to process it whole: the
    /// pipeline must be tile-safe and the job must not say `never`; in auto mode the image
    /// must also be over the threshold and bigger than one tile.
    pub fn halo_for(&self, pipeline: &Pipeline, pixels: u64) -> Option<u32> {
        if self.tile_size == 0 {
            return None;
        }
        let halo = pipeline.tile_halo()?;
        let one_tile = u64::from(self.tile_size) * u64::from(self.tile_size);
        match self.mode {
            v1::Tiling::Never => None,
            v1::Tiling::Always => Some(halo),
            v1::Tiling::Auto | v1::Tiling::Unspecified => {
                (pixels > self.above_pixels && pixels > one_tile).then_some(halo)
            }
        }
    }
}

impl Policy {
    /// What one `pixels`-pixel image costs under this policy, given `estimate` of a pipeline
    /// on it: the whole pipeline's CPU, and its memory unless the image is tiled; then only
    /// the split's (the decode) and the assembly's (the canvas and its encode), which the
    /// empty pipeline's estimate covers, since the ops run on tiles.
    pub fn estimate(
        &self,
        pipeline: &Pipeline,
        pixels: u64,
        estimate: impl Fn(&Pipeline) -> Estimate,
    ) -> Estimate {
        let whole = estimate(pipeline);
        if self.halo_for(pipeline, pixels).is_none() {
            return whole;
        }
        let split = estimate(&Pipeline::default());
        Estimate {
            peak_bytes: split.peak_bytes,
            peak_stage: split.peak_stage,
            ..whole
        }
    }
}

/// `size`, grown until a `width` x `height` image makes at most [`MAX_TILES`] tiles.
pub fn tile_size_for(width: u32, height: u32, size: u32) -> u32 {
    let count = |size: u32| u64::from(width.div_ceil(size)) * u64::from(height.div_ceil(size));
    let mut size = size.max(1);
    while count(size) > u64::from(MAX_TILES) {
        size = size.saturating_mul(2);
    }
    size
}

/// Cuts a `width` x `height` image into tiles of at most `size` x `size`, row by row. The
/// last column and row are narrower when `size` does not divide the image.
pub fn plan(width: u32, height: u32, size: u32, halo: u32) -> Vec<Tile> {
    let size = size.max(1);
    let grow = |start: u32, len: u32, limit: u32| {
        let from = start.saturating_sub(halo);
        let to = start.saturating_add(len).saturating_add(halo).min(limit);
        (from, to - from)
    };
    let mut tiles = Vec::new();
    for y in (0..height).step_by(size as usize) {
        let tile_height = size.min(height - y);
        for x in (0..width).step_by(size as usize) {
            let tile_width = size.min(width - x);
            let (sx, sw) = grow(x, tile_width, width);
            let (sy, sh) = grow(y, tile_height, height);
            tiles.push(Tile {
                core: Rect {
                    x,
                    y,
                    width: tile_width,
                    height: tile_height,
                },
                source: Rect {
                    x: sx,
                    y: sy,
                    width: sw,
                    height: sh,
                },
            });
        }
    }
    tiles
}
