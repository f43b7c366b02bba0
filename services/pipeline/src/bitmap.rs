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

    /// A copy of the `width` x `height` rectangle at `left`, `top`; `None` unless it is
    /// non-empty and lies inside the image.
    pub fn region(&self, left: u32, top: u32, width: u32, height: u32) -> Option<Bitmap> {
        if left.checked_add(width)? > self.width || top.checked_add(height)? > self.height {
            return None;
        }
        let channels = self.channels();
        let stride = self.width as usize * channels;
        let (start, row_bytes) = (left as usize * channels, width as usize * channels);
        let mut data = Vec::with_capacity(row_bytes * height as usize);
        for row in self
            .data
            .chunks_exact(stride)
            .skip(top as usize)
            .take(height as usize)
        {
            data.extend_from_slice(&row[start..start + row_bytes]);
        }
        Bitmap::new(width, height, self.alpha, data)
    }

    /// Replaces each of R, G and B by `table[value]`; alpha is left alone.
    pub fn map_channels(&mut self, table: &[u8; 256]) {
        if self.alpha {
            for pixel in self.data.chunks_exact_mut(4) {
                for channel in &mut pixel[..3] {
                    *channel = table[usize::from(*channel)];
                }
            }
        } else {
            for channel in &mut self.data {
                *channel = table[usize::from(*channel)];
            }
        }
    }

    /// Replaces each pixel's RGB by `matrix` x RGB, the matrix in fixed point with
    /// [`MATRIX_ONE`] as 1.0, rounded and clamped; alpha is left alone. Integer arithmetic, so
    /// every worker computes the same bytes.
    pub fn map_colours(&mut self, matrix: &[[i32; 3]; 3]) {
        let channels = self.channels();
        let half = MATRIX_ONE / 2;
        for pixel in self.data.chunks_exact_mut(channels) {
            let rgb = [
                i32::from(pixel[0]),
                i32::from(pixel[1]),
                i32::from(pixel[2]),
            ];
            for (out, row) in pixel[..3].iter_mut().zip(matrix) {
                let sum = row[0] * rgb[0] + row[1] * rgb[1] + row[2] * rgb[2];
                // Floor division after adding a half rounds half up, negatives included.
                *out = (sum + half).div_euclid(MATRIX_ONE).clamp(0, 255) as u8;
            }
        }
    }
}

/// 1.0 in the fixed point of [`Bitmap::map_colours`]: 12 bits keep the error under half a
/// level, and 255 x 3 x 4096 x (largest coefficient) stays far inside `i32`.
pub const MATRIX_ONE: i32 = 4096;

/// A float colour matrix in [`Bitmap::map_colours`]'s fixed point.
pub fn fixed_matrix(matrix: [[f64; 3]; 3]) -> [[i32; 3]; 3] {
    matrix.map(|row| row.map(|v| (v * f64::from(MATRIX_ONE)).round() as i32))
}

/// BT.601 luma (what JPEG's YCbCr uses) in 8-bit fixed point: the weights 77, 150 and 29 sum
/// to 256, so white stays 255 and the result needs no clamp.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    let sum = 77 * u32::from(r) + 150 * u32::from(g) + 29 * u32::from(b) + 128;
    (sum >> 8) as u8
}
