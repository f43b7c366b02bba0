//! GIF output, one frame or an animation, each frame with its own palette of up to 256
//! colours found by k-means in Oklab (quantette), not dithered.
//!
//! Measured on the 1920-wide reference photo: 1,098 KB in 287 ms at 33.5 dB PSNR, against
//! NeuQuant's 1,306 KB in 547 ms at 33.8 dB and libvips' 1,207 KB (dithered, 34.5 dB) in
//! seconds (BENCHMARKS.md, "GIF"). A frame with alpha gives GIF's one transparent index to
//! every pixel under half opacity and finds the other 255 colours from the rest, so alpha
//! costs no second quantiser. The seed is quantette's fixed default: the same frames give the
//! same bytes.

use std::borrow::Cow;

use gif::{DisposalMethod, Repeat};
use pixelmesh_pipeline::Bitmap;
use quantette::deps::palette::{Srgb, cast};
use quantette::{ImageRef, PaletteSize, Pipeline, QuantizeMethod};

/// Alpha below this is GIF's transparent index; at or above it, the pixel's colour, opaque.
const OPAQUE_FROM: u8 = 128;

/// One frame as GIF: its palette, as RGB triples, one index per pixel, and the transparent
/// index when the frame has one.
struct Indexed {
    palette: Vec<u8>,
    indices: Vec<u8>,
    transparent: Option<u8>,
}

/// `frames`, each with its delay in ms, as a GIF of `width` x `height` (each frame that size;
/// both within GIF's 16 bits, as `codec::check_encodable` checks). `plays` is how many times
/// it runs, 0 for forever; `None` writes no loop count (a still image, or an animation that
/// plays once). Delays are kept in GIF's hundredths of a second, rounded down.
pub fn encode<'a>(
    frames: impl IntoIterator<Item = (&'a Bitmap, u32)>,
    width: u32,
    height: u32,
    plays: Option<u32>,
) -> Result<Vec<u8>, String> {
    let width = u16::try_from(width).map_err(|err| err.to_string())?;
    let height = u16::try_from(height).map_err(|err| err.to_string())?;
    let mut out = Vec::new();
    let mut encoder =
        gif::Encoder::new(&mut out, width, height, &[]).map_err(|err| err.to_string())?;
    if let Some(plays) = plays {
        let repeat = match plays {
            0 => Repeat::Infinite,
            plays => u16::try_from(plays - 1).map_or(Repeat::Infinite, Repeat::Finite),
        };
        encoder.set_repeat(repeat).map_err(|err| err.to_string())?;
    }
    for (bitmap, delay_ms) in frames {
        let indexed = quantise(bitmap)?;
        let frame = gif::Frame {
            width,
            height,
            delay: u16::try_from(delay_ms / 10).unwrap_or(u16::MAX),
            // Every frame is a whole picture: its transparent pixels show the background, not
            // the frame before.
            dispose: DisposalMethod::Background,
            transparent: indexed.transparent,
            palette: Some(indexed.palette),
            buffer: Cow::Borrowed(&indexed.indices),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).map_err(|err| err.to_string())?;
    }
    drop(encoder);
    Ok(out)
}

/// The frame's palette and indices: k-means over every pixel of an opaque frame, or over the
/// opaque pixels of one with alpha, the transparent index after their colours.
fn quantise(bitmap: &Bitmap) -> Result<Indexed, String> {
    if !bitmap.has_alpha() {
        let pixels: &[Srgb<u8>] = cast::from_component_slice(bitmap.data());
        let (palette, indices) = kmeans(pixels, bitmap.width(), bitmap.height(), PaletteSize::MAX)?;
        return Ok(Indexed {
            palette,
            indices,
            transparent: None,
        });
    }
    let opaque: Vec<Srgb<u8>> = bitmap
        .data()
        .chunks_exact(4)
        .filter(|pixel| pixel[3] >= OPAQUE_FROM)
        .map(|pixel| Srgb::new(pixel[0], pixel[1], pixel[2]))
        .collect();
    let count = bitmap.data().len() / 4;
    if opaque.is_empty() {
        return Ok(Indexed {
            palette: vec![0; 3],
            indices: vec![0; count],
            transparent: Some(0),
        });
    }
    let columns = u32::try_from(opaque.len()).map_err(|err| err.to_string())?;
    let colours = PaletteSize::try_from_u16(255).expect("255 is a palette size");
    // Laid out as one row: without dithering, k-means and the mapping do not look at
    // neighbours, so the layout does not change the result.
    let (mut palette, opaque_indices) = kmeans(&opaque, columns, 1, colours)?;
    drop(opaque);
    let transparent = u8::try_from(palette.len() / 3).expect("at most 255 colours were asked");
    palette.extend([0, 0, 0]);
    let mut next = opaque_indices.into_iter();
    let indices = bitmap
        .data()
        .chunks_exact(4)
        .map(|pixel| {
            if pixel[3] >= OPAQUE_FROM {
                next.next().unwrap_or(transparent)
            } else {
                transparent
            }
        })
        .collect();
    Ok(Indexed {
        palette,
        indices,
        transparent: Some(transparent),
    })
}

/// quantette's k-means palette of `pixels` (laid out `width` x `height`), as RGB triples, and
/// each pixel's index into it.
fn kmeans(
    pixels: &[Srgb<u8>],
    width: u32,
    height: u32,
    colours: PaletteSize,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let image = ImageRef::new(width, height, pixels).map_err(|err| err.to_string())?;
    let (palette, indices) = Pipeline::new()
        .palette_size(colours)
        .quantize_method(QuantizeMethod::kmeans())
        .ditherer(None)
        .input_image(image)
        .output_srgb8_indexed_image()
        .into_parts();
    let palette = palette
        .iter()
        .flat_map(|colour| [colour.red, colour.green, colour.blue])
        .collect();
    Ok((palette, indices))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each frame's RGBA pixels and delay, and the loop count.
    fn decode(gif: &[u8]) -> (Vec<(Vec<u8>, u16)>, Repeat) {
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::RGBA);
        let mut decoder = options.read_info(gif).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            frames.push((frame.buffer.to_vec(), frame.delay));
        }
        (frames, decoder.repeat())
    }

    /// A gradient with a transparent hole and a half-transparent band.
    fn rgba(width: u32, height: u32) -> Bitmap {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let alpha = match x {
                    x if x < width / 4 => 0,
                    x if x < width / 2 => 100,
                    x if x < 3 * width / 4 => 200,
                    _ => 255,
                };
                data.extend([(x * 255 / width) as u8, (y * 255 / height) as u8, 90, alpha]);
            }
        }
        Bitmap::new(width, height, true, data).unwrap()
    }

    /// The mean channel error of `gif`'s first frame against `image`, over the pixels at half
    /// opacity or more.
    fn opaque_error(gif: &[u8], image: &Bitmap) -> f64 {
        let (frames, _) = decode(gif);
        let (mut sum, mut count) = (0u64, 0u64);
        for (ours, source) in frames[0]
            .0
            .chunks_exact(4)
            .zip(image.data().chunks_exact(4))
        {
            if source[3] >= OPAQUE_FROM {
                for channel in 0..3 {
                    sum += u64::from(ours[channel].abs_diff(source[channel]));
                    count += 1;
                }
            }
        }
        sum as f64 / count as f64
    }

    #[test]
    fn alpha_under_half_becomes_the_transparent_index_and_the_rest_a_close_palette() {
        let image = rgba(64, 48);
        let gif = encode([(&image, 0)], 64, 48, None).unwrap();
        let (frames, _) = decode(&gif);
        assert_eq!(frames.len(), 1);
        for (ours, source) in frames[0]
            .0
            .chunks_exact(4)
            .zip(image.data().chunks_exact(4))
        {
            let opaque = source[3] >= OPAQUE_FROM;
            assert_eq!(ours[3], if opaque { 255 } else { 0 }, "alpha {}", source[3]);
        }
        let ours = opaque_error(&gif, &image);
        // The NeuQuant encoder that GIFs with alpha went through before.
        let mut neuquant = Vec::new();
        image::codecs::gif::GifEncoder::new_with_speed(&mut neuquant, 10)
            .encode(image.data(), 64, 48, image::ExtendedColorType::Rgba8)
            .unwrap();
        let before = opaque_error(&neuquant, &image);
        // 2.7 against NeuQuant's 7.4 on this gradient.
        assert!(ours < 3.5 && ours < before, "{ours}, NeuQuant {before}");
    }

    #[test]
    fn a_frame_with_no_opaque_pixel_is_all_transparent() {
        let image = Bitmap::new(4, 2, true, vec![9; 32]).unwrap();
        let gif = encode([(&image, 0)], 4, 2, None).unwrap();
        let (pixels, _) = &decode(&gif).0[0];
        assert!(pixels.chunks_exact(4).all(|pixel| pixel[3] == 0));
    }

    #[test]
    fn frames_keep_their_delays_and_the_loop_count_and_their_own_palettes() {
        let red = Bitmap::new(2, 2, false, [255, 0, 0].repeat(4)).unwrap();
        let blue = Bitmap::new(2, 2, false, [0, 0, 255].repeat(4)).unwrap();
        let gif = encode([(&red, 40), (&blue, 1234)], 2, 2, Some(3)).unwrap();
        let (frames, repeat) = decode(&gif);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].1, 4);
        assert_eq!(frames[1].1, 123, "hundredths, rounded down");
        assert_eq!(&frames[0].0[..4], &[255, 0, 0, 255]);
        assert_eq!(&frames[1].0[..4], &[0, 0, 255, 255]);
        assert_eq!(repeat, Repeat::Finite(2), "three plays: two repeats");
    }
}
