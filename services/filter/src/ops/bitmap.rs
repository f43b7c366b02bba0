//! The in-memory image every op works on: 8-bit RGB or RGBA, rows packed without padding.
//!
//! Keeping to two layouts means each op has at most two code paths; the codec converts every
//! other colour type (grey, 16-bit, CMYK…) to one of these on decode.

/// Interleaved 8-bit pixels, `width * height * channels` bytes, row-major, no row padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    width: u32,
    height: u32,
    alpha: bool,
    data: Vec<u8>,
}

impl Bitmap {
    /// Wraps a pixel buffer; `None` if a dimension is zero or the length does not match.
    pub fn new(width: u32, height: u32, alpha: bool, data: Vec<u8>) -> Option<Bitmap> {
        let channels = if alpha { 4 } else { 3 };
        let expected = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(channels)?;
        (width > 0 && height > 0 && data.len() == expected).then_some(Bitmap {
            width,
            height,
            alpha,
            data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// True for RGBA, false for RGB.
    pub fn has_alpha(&self) -> bool {
        self.alpha
    }

    /// Bytes per pixel: 3 or 4.
    pub fn channels(&self) -> usize {
        if self.alpha { 4 } else { 3 }
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}
