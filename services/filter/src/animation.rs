//! Animated GIF and WebP. Each frame is decoded onto the full canvas, the decoder doing the
//! disposal and blending, so every frame is a whole picture the ops can run on; the engine
//! runs the pipeline on each in turn and this module encodes the results again as an
//! animation, with each frame's delay and the loop count.
//!
//! Frames are counted from the block or chunk structure before any is decoded (see
//! [`media::frame_count`]), so an animation over [`MAX_FRAMES`] or over the pixel limit (all
//! its frames together) fails before its pixels are allocated.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;

use image::codecs::gif::GifDecoder;
use image::metadata::Orientation;
use image::{AnimationDecoder, Delay, DynamicImage, ImageDecoder, RgbaImage};
use pixelmesh_common::media::{self, FrameCount};

use crate::codec::{self, DecodeError, Decoded, EncodeError, InputMetadata, Limits};
use crate::metadata::Outgoing;
use pixelmesh_pipeline::Bitmap;
use pixelmesh_pipeline::formats::{Encoding, FileFormat, MAX_FRAMES};

/// How an animation plays: the delay of each frame, and how many times it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// Milliseconds each frame shows, in order.
    pub delays_ms: Vec<u32>,
    /// How many times the animation plays; 0 for forever. GIF's NETSCAPE loop count and
    /// WebP's are carried across as the same number, as libvips does.
    pub loops: u32,
}

/// How many frames `input` has, for a GIF or WebP; 1 for any other format.
pub fn frame_count(input: &[u8], format: FileFormat) -> FrameCount {
    if format.animates() {
        media::count_frames(input)
    } else {
        FrameCount {
            frames: 1,
            complete: true,
        }
    }
}

/// An animated GIF or WebP opened for decoding: its canvas, loop count and metadata read, no
/// frame decoded yet.
pub struct Animation<'a> {
    source: FrameSource<'a>,
    format: FileFormat,
    frames: u32,
}

/// Opens the animated GIF or WebP `input` of `frames` frames (as [`frame_count`] counted
/// them). Refused before any frame is decoded when they are more than [`MAX_FRAMES`], or more
/// pixels together than the limit.
pub fn open<'a>(
    input: &'a [u8],
    format: FileFormat,
    frames: u32,
    limits: &Limits,
) -> Result<Animation<'a>, DecodeError> {
    let source = FrameSource::open(input, format, limits)?;
    check_frames(frames, source.width, source.height, limits)?;
    Ok(Animation {
        source,
        format,
        frames,
    })
}

impl Animation<'_> {
    /// The EXIF, XMP and ICC profile the file carries (GIF's XMP and ICC application
    /// extensions; WebP's EXIF, XMP and ICCP chunks), taken out. What does not read is left
    /// out, as for a still image: the frames are still fine.
    pub fn take_metadata(&mut self) -> InputMetadata {
        std::mem::take(&mut self.source.metadata)
    }

    /// Decodes the frames one at a time, handing each to `each` with its delay before the
    /// next is decoded.
    pub fn decode_each<E: From<DecodeError>>(
        self,
        mut each: impl FnMut(Bitmap, u32) -> Result<(), E>,
    ) -> Result<Timing, E> {
        let Animation {
            source,
            format,
            frames,
        } = self;
        let loops = source.loops;
        let mut delays_ms = Vec::with_capacity(frames as usize);
        // The count came from the structure; a decoder that finds more stops at it, one that
        // finds fewer fails on the frame it could not read.
        for frame in source.take(frames as usize) {
            let (image, delay) = frame?;
            delays_ms.push(delay);
            each(image, delay)?;
        }
        if delays_ms.len() < frames as usize {
            return Err(DecodeError::Corrupt {
                format,
                reason: format!(
                    "the animation ends after {} of its {frames} frames",
                    delays_ms.len()
                ),
            }
            .into());
        }
        Ok(Timing { delays_ms, loops })
    }
}

/// Frame `index` (0 = the first) of `input`, which has `frames` frames (as [`frame_count`]
/// counted them), as a still image, with the decoder's disposal and blending of the frames
/// before it, and the animation's metadata; its profile is applied unless `keep_icc` (as
/// [`codec::decode_with`]). Only that frame and the canvas are held.
pub fn decode_frame(
    input: &[u8],
    format: FileFormat,
    index: u32,
    frames: u32,
    limits: &Limits,
    keep_icc: bool,
) -> Result<Decoded, DecodeError> {
    if index >= frames {
        return Err(DecodeError::NoSuchFrame { index, frames });
    }
    let mut source = FrameSource::open(input, format, limits)?;
    let InputMetadata { exif, xmp, icc } = std::mem::take(&mut source.metadata);
    let (mut image, _) = source.nth(index as usize).unwrap_or_else(|| {
        Err(DecodeError::Corrupt {
            format,
            reason: format!("frame {index} could not be read"),
        })
    })?;
    let (colour_profile, icc) = codec::manage_colour(&mut image, icc, keep_icc);
    Ok(Decoded {
        full_size: (image.width(), image.height()),
        colour_type: if image.has_alpha() { "rgba8" } else { "rgb8" }.into(),
        image,
        format,
        exif,
        xmp,
        icc,
        colour_profile,
    })
}

/// Encodes `frames`, each shown for its delay in `timing`, as an animated GIF or WebP at
/// `encoding`'s settings, with what `encoding` keeps of `metadata` (WebP holds EXIF, XMP and
/// the profile; GIF none).
pub fn encode(
    frames: &[Bitmap],
    timing: &Timing,
    encoding: &Encoding,
    metadata: &InputMetadata,
) -> Result<Vec<u8>, EncodeError> {
    let format = encoding.format;
    let failed = |reason: String| EncodeError::Failed { format, reason };
    let Some(first) = frames.first() else {
        return Err(failed("an animation needs at least one frame".into()));
    };
    let (width, height) = (first.width(), first.height());
    codec::check_encodable(format, width, height)?;
    if frames
        .iter()
        .any(|frame| (frame.width(), frame.height()) != (width, height))
    {
        return Err(failed("the frames of an animation differ in size".into()));
    }
    match format {
        FileFormat::Gif => {
            // Each frame quantised on its own, so colours do not band across a palette shared
            // by frames that differ. Plays once: no NETSCAPE extension (see gif_plays).
            let plays = (timing.loops != 1).then_some(timing.loops);
            let frames = frames.iter().zip(timing.delays_ms.iter().copied());
            crate::gif_writer::encode(frames, width, height, plays).map_err(failed)
        }
        FileFormat::Webp => {
            let out = encode_webp(frames, timing, encoding).map_err(&failed)?;
            let outgoing = Outgoing::new(encoding, metadata);
            if outgoing.is_empty() {
                Ok(out)
            } else {
                crate::metadata::webp_with(&out, &outgoing).map_err(failed)
            }
        }
        other => Err(failed(format!("{} holds one frame", other.name()))),
    }
}

/// An animation's frames, decoded one at a time onto the canvas, each with its delay in ms.
struct FrameSource<'a> {
    frames: Frames<'a>,
    width: u32,
    height: u32,
    /// How many times it plays; 0 for forever.
    loops: u32,
    /// What the header or chunk list carries.
    metadata: InputMetadata,
}

enum Frames<'a> {
    Gif(image::Frames<'a>),
    Webp(WebpFrames<'a>),
}

impl<'a> FrameSource<'a> {
    /// GIF by image's decoder; WebP by libwebp's (see [`WebpFrames`]).
    fn open(
        input: &'a [u8],
        format: FileFormat,
        limits: &Limits,
    ) -> Result<FrameSource<'a>, DecodeError> {
        let source = match format {
            FileFormat::Gif => {
                // The parsers see hostile bytes as the frame decoder does.
                let (decoder, metadata) = std::panic::catch_unwind(|| {
                    let mut decoder = GifDecoder::new(Cursor::new(input))?;
                    let metadata = codec::embedded_metadata(&mut decoder);
                    Ok((decoder, metadata))
                })
                .map_err(|_| codec::crashed(format))?
                .map_err(|err| codec::decode_error(format, err))?;
                let (width, height) = decoder.dimensions();
                FrameSource {
                    frames: Frames::Gif(decoder.into_frames()),
                    width,
                    height,
                    loops: gif_plays(input),
                    metadata,
                }
            }
            FileFormat::Webp => {
                let frames = WebpFrames::new(input)?;
                FrameSource {
                    width: frames.width,
                    height: frames.height,
                    loops: frames.loops,
                    metadata: frames.metadata(),
                    frames: Frames::Webp(frames),
                }
            }
            other => {
                return Err(DecodeError::Unsupported {
                    format: other,
                    reason: "it holds one frame".into(),
                });
            }
        };
        codec::check_pixels(source.width, source.height, limits)?;
        Ok(source)
    }
}

impl Iterator for FrameSource<'_> {
    type Item = Result<(Bitmap, u32), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let format = match self.frames {
            Frames::Gif(_) => FileFormat::Gif,
            Frames::Webp(_) => FileFormat::Webp,
        };
        // As in codec::decode_with: a decoder's panic on hostile bytes fails this input only.
        let next = std::panic::catch_unwind(AssertUnwindSafe(|| match &mut self.frames {
            Frames::Gif(frames) => Some(
                frames
                    .next()?
                    .map_err(|err| codec::decode_error(format, err))
                    .and_then(|frame| {
                        let delay = delay_ms(frame.delay());
                        Ok((to_bitmap(frame.into_buffer(), format)?, delay))
                    }),
            ),
            Frames::Webp(frames) => frames.next(),
        }));
        next.unwrap_or_else(|_| Some(Err(codec::crashed(format))))
    }
}

/// WebP frames by libwebp's animation decoder, the one libvips uses, through libwebp-sys.
/// image-webp's blending of a frame over the canvas is off by a level where libwebp's is
/// exact: measured, a mean of 1.0 on a lossless animation that libvips reads back exactly.
struct WebpFrames<'a> {
    decoder: *mut libwebp_sys::WebPAnimDecoder,
    width: u32,
    height: u32,
    loops: u32,
    /// The end of the previous frame, in ms from the start.
    shown: i32,
    /// The decoder reads from the input without copying it.
    input: std::marker::PhantomData<&'a [u8]>,
}

#[allow(unsafe_code)]
impl<'a> WebpFrames<'a> {
    fn new(input: &'a [u8]) -> Result<WebpFrames<'a>, DecodeError> {
        use libwebp_sys as sys;
        let corrupt = |reason: &str| DecodeError::Corrupt {
            format: FileFormat::Webp,
            reason: reason.into(),
        };
        // SAFETY: the options and info are initialised by libwebp before use; the decoder
        // reads `input`, which the returned value borrows for its lifetime, and is deleted
        // by its Drop (or here, when its info does not read).
        unsafe {
            let mut options = std::mem::zeroed::<sys::WebPAnimDecoderOptions>();
            if sys::WebPAnimDecoderOptionsInitInternal(&mut options, sys::WebPGetDemuxABIVersion())
                == 0
            {
                return Err(corrupt("libwebp could not initialise its decoder"));
            }
            options.color_mode = sys::WEBP_CSP_MODE::MODE_RGBA;
            options.use_threads = 0;
            let data = sys::WebPData {
                bytes: input.as_ptr(),
                size: input.len(),
            };
            let decoder =
                sys::WebPAnimDecoderNewInternal(&data, &options, sys::WebPGetDemuxABIVersion());
            if decoder.is_null() {
                return Err(corrupt("libwebp could not read the animation"));
            }
            let mut info = std::mem::zeroed::<sys::WebPAnimInfo>();
            if sys::WebPAnimDecoderGetInfo(decoder, &mut info) == 0 {
                sys::WebPAnimDecoderDelete(decoder);
                return Err(corrupt("libwebp could not read the animation's header"));
            }
            Ok(WebpFrames {
                decoder,
                width: info.canvas_width,
                height: info.canvas_height,
                loops: info.loop_count,
                shown: 0,
                input: std::marker::PhantomData,
            })
        }
    }

    /// The EXIF, XMP and ICCP chunks, from the chunk list libwebp's demuxer has already
    /// read, so the file is parsed once.
    fn metadata(&self) -> InputMetadata {
        let mut exif = self.chunk(b"EXIF");
        // Some writers keep JPEG's prefix in the chunk.
        if exif.starts_with(b"Exif\0\0") {
            exif.drain(..6);
        }
        InputMetadata {
            exif,
            xmp: self.chunk(b"XMP "),
            icc: Some(self.chunk(b"ICCP")).filter(|icc| !icc.is_empty()),
        }
    }

    /// The first chunk named `fourcc`, empty when there is none.
    fn chunk(&self, fourcc: &[u8; 4]) -> Vec<u8> {
        use libwebp_sys as sys;
        // SAFETY: the demuxer belongs to the live decoder; the iterator is initialised by
        // WebPDemuxGetChunk, its data points into `input` (borrowed for 'a) and is copied
        // out before the iterator is released.
        unsafe {
            let demux = sys::WebPAnimDecoderGetDemuxer(self.decoder);
            let mut iter = std::mem::zeroed::<sys::WebPChunkIterator>();
            if demux.is_null()
                || sys::WebPDemuxGetChunk(demux, fourcc.as_ptr().cast(), 1, &mut iter) == 0
            {
                return Vec::new();
            }
            let chunk = if iter.chunk.bytes.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(iter.chunk.bytes, iter.chunk.size).to_vec()
            };
            sys::WebPDemuxReleaseChunkIterator(&mut iter);
            chunk
        }
    }

    fn next(&mut self) -> Option<Result<(Bitmap, u32), DecodeError>> {
        use libwebp_sys as sys;
        let len = self.width as usize * self.height as usize * 4;
        let mut buffer: *mut u8 = std::ptr::null_mut();
        let mut timestamp = 0;
        // SAFETY: the decoder is live; a frame's buffer is canvas-sized RGBA owned by the
        // decoder, valid until the next call, and copied out before it.
        let rgba = unsafe {
            if sys::WebPAnimDecoderHasMoreFrames(self.decoder) == 0 {
                return None;
            }
            if sys::WebPAnimDecoderGetNext(self.decoder, &mut buffer, &mut timestamp) == 0
                || buffer.is_null()
            {
                return Some(Err(DecodeError::Corrupt {
                    format: FileFormat::Webp,
                    reason: "a frame could not be decoded".into(),
                }));
            }
            std::slice::from_raw_parts(buffer, len).to_vec()
        };
        // libwebp gives each frame's end time.
        let delay = u32::try_from(timestamp.saturating_sub(self.shown)).unwrap_or(0);
        self.shown = timestamp;
        let image = RgbaImage::from_raw(self.width, self.height, rgba)
            .ok_or_else(|| DecodeError::Corrupt {
                format: FileFormat::Webp,
                reason: "a frame has no pixels".into(),
            })
            .and_then(|frame| to_bitmap(frame, FileFormat::Webp));
        Some(image.map(|image| (image, delay)))
    }
}

#[allow(unsafe_code)]
impl Drop for WebpFrames<'_> {
    fn drop(&mut self) {
        // SAFETY: created by WebPAnimDecoderNewInternal, deleted once, here.
        unsafe { libwebp_sys::WebPAnimDecoderDelete(self.decoder) }
    }
}

/// How many times a GIF plays; 0 for forever. Its NETSCAPE extension counts the repeats
/// after the first play, 0 meaning forever, and a GIF without one plays once: read with the
/// gif crate, since image reports a missing extension as forever.
fn gif_plays(input: &[u8]) -> u32 {
    let mut options = gif::DecodeOptions::new();
    options.skip_frame_decoding(true);
    let Ok(mut decoder) = options.read_info(input) else {
        return 0;
    };
    // The extension comes before the first frame; reading that frame's header takes it in.
    let _ = decoder.next_frame_info();
    match decoder.repeat() {
        gif::Repeat::Infinite => 0,
        gif::Repeat::Finite(repeats) => u32::from(repeats) + 1,
    }
}

/// Frames count toward the pixel limit together: they are all alive until the encode.
fn check_frames(frames: u32, width: u32, height: u32, limits: &Limits) -> Result<(), DecodeError> {
    let pixels = u64::from(frames) * u64::from(width) * u64::from(height);
    if frames > MAX_FRAMES || pixels > limits.max_pixels {
        return Err(DecodeError::TooManyFrames {
            frames,
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

fn to_bitmap(frame: RgbaImage, format: FileFormat) -> Result<Bitmap, DecodeError> {
    codec::to_bitmap(DynamicImage::ImageRgba8(frame), Orientation::NoTransforms).ok_or_else(|| {
        DecodeError::Corrupt {
            format,
            reason: "a frame has no pixels".into(),
        }
    })
}

/// A delay in whole milliseconds (GIF's are in hundredths of a second, exact in ms).
fn delay_ms(delay: Delay) -> u32 {
    let (numer, denom) = delay.numer_denom_ms();
    numer.checked_div(denom).unwrap_or(0)
}

/// By libwebp's animation encoder, lossless or lossy as `encoding` says. Hand-written over
/// libwebp-sys: the webp crate's `AnimEncoder` closes the animation with a timestamp of 0,
/// which libwebp refuses, so the last frame's delay is lost (set to the average of the
/// others).
#[allow(unsafe_code)]
fn encode_webp(frames: &[Bitmap], timing: &Timing, encoding: &Encoding) -> Result<Vec<u8>, String> {
    use libwebp_sys as sys;
    let (width, height) = (frames[0].width(), frames[0].height());
    let (w, h) = (
        i32::try_from(width).map_err(|err| err.to_string())?,
        i32::try_from(height).map_err(|err| err.to_string())?,
    );
    // As the still encoders: the webp crate's settings for lossy, libwebp's defaults (effort
    // 75) for lossless.
    let mut config = sys::WebPConfig::new()
        .map_err(|()| "libwebp refused its default configuration".to_string())?;
    config.lossless = i32::from(encoding.lossless);
    if !encoding.lossless {
        config.alpha_compression = 1;
        config.quality = f32::from(encoding.quality.clamp(1, 100));
    }
    // SAFETY: the options, config and pictures are initialised by libwebp's own init
    // functions before use; each picture imports from a buffer that outlives the call and is
    // freed after it; the encoder is deleted, and the assembled buffer copied out and freed,
    // on every path.
    unsafe {
        let mut options = std::mem::zeroed::<sys::WebPAnimEncoderOptions>();
        if sys::WebPAnimEncoderOptionsInitInternal(&mut options, sys::WebPGetMuxABIVersion()) == 0 {
            return Err("libwebp could not initialise its animation options".into());
        }
        options.anim_params.loop_count = i32::try_from(timing.loops).unwrap_or(0);
        let encoder = sys::WebPAnimEncoderNewInternal(w, h, &options, sys::WebPGetMuxABIVersion());
        if encoder.is_null() {
            return Err("libwebp could not create an animation encoder".into());
        }
        let mut result = Ok(());
        let mut timestamp: i32 = 0;
        for (frame, &delay) in frames.iter().zip(&timing.delays_ms) {
            let mut picture = std::mem::zeroed::<sys::WebPPicture>();
            if sys::WebPPictureInitInternal(&mut picture, sys::WEBP_ENCODER_ABI_VERSION as i32) == 0
            {
                result = Err("libwebp could not initialise a picture".to_string());
                break;
            }
            picture.use_argb = 1;
            picture.width = w;
            picture.height = h;
            let imported = if frame.has_alpha() {
                sys::WebPPictureImportRGBA(&mut picture, frame.data().as_ptr(), w * 4)
            } else {
                sys::WebPPictureImportRGB(&mut picture, frame.data().as_ptr(), w * 3)
            };
            let added = imported != 0
                && sys::WebPAnimEncoderAdd(encoder, &mut picture, timestamp, &config) != 0;
            sys::WebPPictureFree(&mut picture);
            if !added {
                result = Err(anim_error(encoder));
                break;
            }
            timestamp = timestamp.saturating_add(i32::try_from(delay).unwrap_or(i32::MAX));
        }
        let mut assembled = sys::WebPData::default();
        if result.is_ok() {
            // The closing call's timestamp ends the last frame: its delay, kept exactly.
            if sys::WebPAnimEncoderAdd(encoder, std::ptr::null_mut(), timestamp, std::ptr::null())
                == 0
                || sys::WebPAnimEncoderAssemble(encoder, &mut assembled) == 0
            {
                result = Err(anim_error(encoder));
            }
        }
        sys::WebPAnimEncoderDelete(encoder);
        let out = crate::metadata::take_webp_data(&mut assembled);
        result.map(|()| out)
    }
}

/// The animation encoder's last error, lowercased.
#[allow(unsafe_code)]
unsafe fn anim_error(encoder: *mut libwebp_sys::WebPAnimEncoder) -> String {
    // SAFETY: the encoder is live; libwebp returns a static string or null.
    let message = unsafe { libwebp_sys::WebPAnimEncoderGetError(encoder) };
    if message.is_null() {
        return "libwebp could not encode the animation".into();
    }
    // SAFETY: a NUL-terminated string owned by the encoder, read before it is deleted.
    let message = unsafe { std::ffi::CStr::from_ptr(message) };
    format!("libwebp: {}", message.to_string_lossy().to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::test_data;
    use crate::engine::{self, ProcessError};
    use crate::ops::Pipeline;
    use pixelmesh_proto::ErrorCode;

    const DELAYS: [u32; 4] = [100, 200, 300, 400];

    /// Every frame of `input` with its timing.
    fn frames_of(input: &[u8]) -> (Vec<Bitmap>, Timing) {
        let format = codec::detect_format(input).unwrap();
        let count = frame_count(input, format).frames;
        let mut frames = Vec::new();
        let timing = open(input, format, count, &Limits::default())
            .unwrap()
            .decode_each(|image, _| {
                frames.push(image);
                Ok::<(), DecodeError>(())
            })
            .unwrap();
        (frames, timing)
    }

    /// What the animation `input` carries, as the engine reads it.
    fn metadata(input: &[u8], format: FileFormat) -> InputMetadata {
        let count = frame_count(input, format).frames;
        open(input, format, count, &Limits::default())
            .unwrap()
            .take_metadata()
    }

    /// The RGB samples of a bitmap, its alpha dropped.
    fn rgb(image: &Bitmap) -> Vec<u8> {
        if !image.has_alpha() {
            return image.data().to_vec();
        }
        image
            .data()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    }

    fn mean_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        sum as f64 / a.len() as f64
    }

    /// Frame `i` of libvips' decode of a fixture, a vertical strip of 80x50 frames.
    fn libvips_frame(strip: &str, i: usize) -> Vec<u8> {
        let strip = codec::decode(&test_data(strip), &Limits::default())
            .unwrap()
            .image;
        let row = 80 * strip.channels();
        let frame = &strip.data()[i * 50 * row..(i + 1) * 50 * row];
        rgb(&Bitmap::new(80, 50, strip.has_alpha(), frame.to_vec()).unwrap())
    }

    fn process(input: &[u8], text: &str) -> Result<engine::Processed, ProcessError> {
        engine::process(
            input,
            &Pipeline::from_text(text).unwrap(),
            &Limits::default(),
        )
    }

    #[test]
    fn every_frame_decodes_as_libvips_decodes_it_with_its_delay_and_loop_count() {
        for (file, strip, tolerance) in [
            ("kite-4-frames.gif", "kite-4-frames-gif.png", 0.0),
            ("kite-4-frames.webp", "kite-4-frames-webp.png", 0.0),
        ] {
            let (frames, timing) = frames_of(&test_data(file));
            assert_eq!(frames.len(), 4, "{file}");
            assert_eq!(timing.delays_ms, DELAYS, "{file}");
            assert_eq!(timing.loops, 3, "{file}");
            for (i, frame) in frames.iter().enumerate() {
                assert_eq!((frame.width(), frame.height()), (80, 50));
                let diff = mean_diff(&rgb(frame), &libvips_frame(strip, i));
                assert!(diff <= tolerance, "{file} frame {i}: {diff}");
            }
            // The frames differ: the moving band and the hue turn are there.
            assert!(mean_diff(&rgb(&frames[0]), &rgb(&frames[1])) > 10.0);
        }
    }

    #[test]
    fn an_animation_keeps_every_frame_through_the_pipeline_and_across_formats() {
        let ops = "resize:w=40/crop:w=36,h=24/flip/rotate:90/brightness:1.1";
        for (input, output, tolerance) in [
            ("kite-4-frames.gif", "format:webp,quality=90", 4.0),
            ("kite-4-frames.webp", "format:gif", 8.0),
            ("kite-4-frames.gif", "format:webp,lossless=true", 0.0),
        ] {
            let input = test_data(input);
            let out = process(&input, &format!("{ops}/{output}")).unwrap();
            assert_eq!((out.width, out.height), (24, 36), "{output}");
            let (frames, timing) = frames_of(&out.bytes);
            assert_eq!(frames.len(), 4, "{output}");
            assert_eq!(timing.delays_ms, DELAYS, "{output}: every delay kept");
            assert_eq!(timing.loops, 3, "{output}");
            // Each output frame is the same ops on that one input frame, as a still.
            for (i, frame) in frames.iter().enumerate() {
                let still = process(&input, &format!("{ops}/format:png,frame={i}")).unwrap();
                let still = codec::decode(&still.bytes, &Limits::default())
                    .unwrap()
                    .image;
                let diff = mean_diff(&rgb(frame), &rgb(&still));
                assert!(diff <= tolerance, "{output} frame {i}: {diff}");
            }
        }
        // With no format op the output is the input's format, still animated.
        let out = process(&test_data("kite-4-frames.gif"), "grayscale").unwrap();
        assert_eq!(out.content_type, "image/gif");
        assert_eq!(frames_of(&out.bytes).0.len(), 4);
    }

    /// kite-4-frames.webp with an EXIF block, an XMP packet and the Adobe RGB profile added.
    fn tagged_webp() -> (Vec<u8>, Outgoing) {
        let (_, adobe) = codec::tests::system_profile("compatibleWithAdobeRGB1998.icc");
        let chunks = Outgoing {
            exif: crate::metadata::tests::exif(1),
            xmp: crate::metadata::tests::XMP.to_vec(),
            icc: Some(adobe),
        };
        let tagged = crate::metadata::webp_with(&test_data("kite-4-frames.webp"), &chunks).unwrap();
        (tagged, chunks)
    }

    #[test]
    fn an_animated_webp_keeps_its_metadata_on_request_and_its_frames_get_its_profile() {
        let (tagged, chunks) = tagged_webp();
        let read = metadata(&tagged, FileFormat::Webp);
        assert_eq!(
            (&read.exif, &read.xmp, &read.icc),
            (&chunks.exif, &chunks.xmp, &chunks.icc)
        );
        let (stored, _) = frames_of(&tagged);

        // strip=false: the chunks are carried and the frames stay in Adobe RGB.
        let kept = process(&tagged, "format:webp,lossless=true,strip=false").unwrap();
        let carried = metadata(&kept.bytes, FileFormat::Webp);
        assert_eq!(carried.icc, chunks.icc);
        assert_eq!(carried.xmp, chunks.xmp);
        assert!(!carried.exif.is_empty());
        let (frames, timing) = frames_of(&kept.bytes);
        assert_eq!(timing.delays_ms, DELAYS);
        for (frame, stored) in frames.iter().zip(&stored) {
            assert_eq!(rgb(frame), rgb(stored), "unconverted, losslessly");
        }

        // By default: nothing carried, every frame converted to sRGB as a still would be.
        let stripped = process(&tagged, "format:webp,lossless=true").unwrap();
        assert_eq!(
            metadata(&stripped.bytes, FileFormat::Webp),
            InputMetadata::default()
        );
        let (frames, _) = frames_of(&stripped.bytes);
        assert_eq!(frames.len(), 4);
        let icc = chunks.icc.as_deref().unwrap();
        for (i, (frame, stored)) in frames.iter().zip(&stored).enumerate() {
            let mut expected = stored.clone();
            assert!(matches!(
                crate::colour::to_srgb(&mut expected, icc),
                crate::colour::Applied::Converted(_)
            ));
            assert_eq!(rgb(frame), rgb(&expected), "frame {i}");
            // Adobe RGB's wider primaries: the conversion moves the colours visibly.
            let moved = mean_diff(&rgb(frame), &rgb(stored));
            assert!(moved > 1.0, "frame {i} moved {moved}");
            // frame=i as a still gets the same conversion.
            let still = process(&tagged, &format!("format:png,frame={i}")).unwrap();
            let still = codec::decode(&still.bytes, &Limits::default())
                .unwrap()
                .image;
            assert_eq!(rgb(&still), rgb(&expected), "frame={i}");
        }

        // GIF holds none of it; the frames are converted all the same.
        let gif = process(&tagged, "format:gif,strip=false").unwrap();
        assert_eq!(
            metadata(&gif.bytes, FileFormat::Gif),
            InputMetadata::default()
        );
    }

    #[test]
    fn an_op_that_cannot_animate_is_refused_unless_a_frame_is_picked() {
        let gif = test_data("kite-4-frames.gif");
        for text in ["analyze", "resize:w=40/format:png", "format:jpeg"] {
            let err = process(&gif, text).unwrap_err();
            assert!(matches!(err, ProcessError::CannotAnimate(_)), "{text}");
            assert_eq!(err.code(), ErrorCode::InvalidArgument);
            assert!(
                err.message()
                    .starts_with("the input is an animation of 4 frames and op "),
                "{}",
                err.message()
            );
        }
        // frame=N: that frame alone, as libvips decodes it.
        for i in 0..4 {
            let out = process(&gif, &format!("analyze/format:png,frame={i}")).unwrap();
            assert_eq!(out.analysis.len(), 1);
            let image = codec::decode(&out.bytes, &Limits::default()).unwrap().image;
            assert_eq!(
                rgb(&image),
                libvips_frame("kite-4-frames-gif.png", i),
                "{i}"
            );
        }
        let webp = test_data("kite-4-frames.webp");
        let first = process(&webp, "format:png,frame=0").unwrap();
        let first = codec::decode(&first.bytes, &Limits::default())
            .unwrap()
            .image;
        assert!(mean_diff(&rgb(&first), &libvips_frame("kite-4-frames-webp.png", 0)) <= 1.0);
        // A frame the input does not have, in an animation or a still.
        let err = process(&gif, "format:gif,frame=4").unwrap_err();
        assert_eq!(
            err.message(),
            "frame 4 was asked for, and the image has 4 frame(s)"
        );
        let png = test_data("kite-rgba-320x200.png");
        assert!(process(&png, "format:png,frame=1").is_err());
        assert!(process(&png, "format:png,frame=0").is_ok());
    }

    #[test]
    fn frames_count_toward_the_pixel_limit_and_a_cut_animation_fails_by_name() {
        let gif = test_data("kite-4-frames.gif");
        // One 80x50 frame fits in 10,000 pixels; four do not.
        let limits = Limits {
            max_pixels: 10_000,
            ..Limits::default()
        };
        let pipeline = Pipeline::from_text("grayscale").unwrap();
        let err = engine::process(&gif, &pipeline, &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ProcessError::Decode(DecodeError::TooManyFrames { frames: 4, .. })
            ),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);
        assert!(err.message().starts_with("animation of 4 frames of 80x50"));
        let one = Pipeline::from_text("grayscale/format:gif,frame=3").unwrap();
        assert!(engine::process(&gif, &one, &limits).is_ok());
        // Over the frame limit, whatever their size.
        assert!(check_frames(MAX_FRAMES + 1, 1, 1, &Limits::default()).is_err());
        assert!(check_frames(MAX_FRAMES, 1, 1, &Limits::default()).is_ok());

        // Cut inside its last frames: the frames seen are fewer, and the decode says so.
        for file in ["kite-4-frames.gif", "kite-4-frames.webp"] {
            let data = test_data(file);
            let cut = &data[..data.len() * 3 / 4];
            let err = process(cut, "grayscale").map(|_| ()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{file}: {err}");
        }
    }

    #[test]
    fn the_last_frame_keeps_its_own_delay_in_webp() {
        let frame = |v: u8| Bitmap::new(8, 8, false, vec![v; 8 * 8 * 3]).unwrap();
        let frames = [frame(0), frame(128), frame(255)];
        let timing = Timing {
            delays_ms: vec![50, 70, 990],
            loops: 0,
        };
        let none = InputMetadata::default();
        for encoding in [
            Encoding {
                lossless: false,
                ..Encoding::new(FileFormat::Webp)
            },
            Encoding::new(FileFormat::Webp),
            Encoding::new(FileFormat::Gif),
        ] {
            let bytes = encode(&frames, &timing, &encoding, &none).unwrap();
            let (decoded, back) = frames_of(&bytes);
            assert_eq!(back, timing, "{encoding:?}");
            assert_eq!(decoded.len(), 3);
        }
        let odd = [frame(0), Bitmap::new(4, 4, false, vec![0; 48]).unwrap()];
        assert!(encode(&odd, &timing, &Encoding::new(FileFormat::Gif), &none).is_err());
        let jpeg = Encoding::new(FileFormat::Jpeg);
        assert!(encode(&frames, &timing, &jpeg, &none).is_err());
    }
}
