//! The budget's memory estimate against what the allocator is really asked for.
//!
//! A counting global allocator (wrapping the system's) tracks, per thread, the bytes allocated
//! and not yet freed, and their peak; `engine::process` runs real photos and a generated 16-bit
//! RGBA PNG through pipelines that resize up and down, blur, sharpen and rotate, and the
//! measured peak must lie within the estimate, and the estimate within 3x the peak.
//!
//! What the counting sees: every Rust allocation at its requested size, a `Vec`'s spare
//! capacity included. What it cannot: libjpeg-turbo's and libwebp's own `malloc`s (a
//! progressive JPEG's coefficients, lossy WebP's YUV picture), which the estimate counts too;
//! so the 3x bound is looser than it looks for those, and a bound from below for the rest.
//! The encoded input is allocated before measuring, as the worker holds it before processing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use pixelmesh_filter::budget::Estimate;
use pixelmesh_filter::codec::{self, Encoding, Limits, Probe};
use pixelmesh_filter::engine;
use pixelmesh_filter::ops::Pipeline;
use pixelmesh_pipeline::FileFormat;

struct Counting;

thread_local! {
    // Per thread, so tests running in parallel do not count each other; the engine is
    // single-threaded. Const-initialised and without destructors, so usable from the allocator.
    static CURRENT: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    let _ = CURRENT.try_with(|current| {
        let now = current.get() + delta;
        current.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes straight to `System`, with the caller's arguments; the counting
// only touches thread-local integers and never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // glibc moves big blocks with mremap, so the old and new sizes are never both
            // held; a copying realloc would briefly hold both, which this does not count.
            count(new_size as i64 - layout.size() as i64);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `work` and returns its result and the most bytes it held at once beyond what was
/// allocated before it started.
fn measure<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let start = CURRENT.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = work();
    let peak = PEAK.with(Cell::get);
    (result, (peak - start).max(0) as u64)
}

fn corpus(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../../shared/corpus/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A `width` x `height` 16-bit RGBA PNG: smooth gradients, alpha varying across it (so the
/// decode keeps it), compressed fast.
fn png_rgba16(width: u32, height: u32) -> Vec<u8> {
    let image = image::ImageBuffer::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        image::Rgba([
            (fx * 65535.0) as u16,
            (fy * 65535.0) as u16,
            (((fx * 40.0).sin() * 0.5 + 0.5) * 65535.0) as u16,
            (20000.0 + fx * 45535.0) as u16,
        ])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba16(image)
        .write_with_encoder(image::codecs::png::PngEncoder::new_with_quality(
            Cursor::new(&mut png),
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Sub,
        ))
        .expect("encode the generated png");
    png
}

/// One input through one pipeline: the estimate from its header, and the measured peak.
struct Run {
    case: String,
    probe: Probe,
    estimate: Estimate,
    declared: Estimate,
    measured: u64,
    millis: f64,
}

fn run(name: &str, input: &[u8], text: &str) -> Run {
    let pipeline = Pipeline::from_text(text).expect("a valid pipeline");
    let probe = codec::probe(input).expect("a readable header");
    let estimate = pipeline.estimate_probed(&probe.input());
    // What the scheduler knows: the size and depth, not the format or orientation (for the
    // EXIF-rotated photo the stored size is the upright one turned, which `estimate` covers).
    let declared = pipeline.estimate(probe.width, probe.height, probe.bytes_per_pixel);
    let started = std::time::Instant::now();
    let (output, measured) = measure(|| engine::process(input, &pipeline, &Limits::default()));
    let millis = started.elapsed().as_secs_f64() * 1e3;
    output.unwrap_or_else(|err| panic!("{name} {text}: {err}"));
    Run {
        case: format!("{name} {text}"),
        probe,
        estimate,
        declared,
        measured,
        millis,
    }
}

/// `jpeg` as an AVIF, at effort 0 (the quickest).
fn avif(jpeg: &[u8]) -> Vec<u8> {
    let image = codec::decode(jpeg, &Limits::default()).unwrap().image;
    let encoding = Encoding {
        effort: 0,
        ..Encoding::new(FileFormat::Avif)
    };
    codec::encode_with(&image, &encoding).unwrap()
}

/// Inputs and pipelines covering every decoder path (baseline and progressive JPEG, an
/// EXIF-rotated one, shrink-on-load, RGB and opaque-RGBA PNG, 16-bit RGBA PNG, lossy WebP, AVIF,
/// a quarter-turned AVIF)
/// and the ops that allocate (resize both ways and padded, blur, sharpen, rotate, crop).
fn runs() -> Vec<Run> {
    let rgba16 = png_rgba16(1600, 1200);
    let kite = corpus("kite-2560x1600.jpg");
    let mut runs = vec![
        run("kite (baseline jpeg)", &kite, "resize:w=800/format:jpeg"),
        run("kite", &kite, "resize:w=4000,upscale=true/format:jpeg,q=90"),
        run(
            "kite",
            &kite,
            "resize:w=1600,h=1600,fit=exact/format:png,compression=1",
        ),
        // Face detection's grey copy, pyramid and feature maps, and the smart fallback's copy.
        run(
            "kite",
            &kite,
            "crop:w=1000,h=1000,g=face/analyze/blur_faces/format:jpeg",
        ),
        run(
            "autumn (progressive 4:4:4)",
            &corpus("autumn-2560x1600.jpg"),
            "blur:sigma=3/format:jpeg",
        ),
        run(
            "colorful cups (progressive 4:2:2)",
            &corpus("colorful-cups-2560x1600.jpg"),
            "rotate:30/format:png,compression=1",
        ),
        run(
            "safe landing exif (turned on decode)",
            &corpus("safe-landing-exif-1622x2880.jpg"),
            "sharpen:sigma=2/format:jpeg,q=80",
        ),
        run(
            "safe landing 5k (shrunk on load)",
            &corpus("safe-landing-5120x2880.jpg"),
            "thumbnail:w=256/format:webp,q=80",
        ),
        run(
            "ice cold (opaque rgba png)",
            &corpus("ice-cold-rgba-5120x2880.png"),
            "resize:w=1920/format:jpeg",
        ),
        run(
            "opal (rgb png)",
            &corpus("opal-3840x2160.png"),
            "crop:w=1200,h=1000,g=centre/blur:sigma=12/format:png",
        ),
        run("kite", &kite, "resize:w=1280/format:avif,q=60"),
        run("kite", &kite, "format:gif"),
        // libdeflate: the filtered rows and its output buffer beside the bitmap.
        run("kite", &kite, "format:png"),
        run("kite (avif)", &avif(&kite), "resize:w=1280/format:jpeg"),
        // libvips' AVIF of the kite with `irot`: decoded, then turned a quarter.
        run(
            "kite (avif with irot, turned on decode)",
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/kite-2560x1600-irot.avif"
            ))
            .expect("the fixture"),
            "sharpen/format:png,compression=1",
        ),
        run(
            "wood (lossy webp)",
            &corpus("wood-4096x4096.webp"),
            "resize:w=1024/edge/format:webp,lossless=true",
        ),
    ];
    for text in [
        "blur:sigma=2/format:png,compression=1",
        "flip/format:png,compression=9",
        "rotate:30/sharpen/format:jpeg",
        "resize:w=3000,upscale=true/format:tiff",
        "pixelate:8/format:bmp",
        "resize:w=400/format:gif",
        "format:gif",
    ] {
        runs.push(run("16-bit rgba png", &rgba16, text));
    }
    runs
}

/// `cargo test -p pixelmesh-filter --test budget_memory -- --nocapture` prints every case's
/// estimate against its measured peak.
#[test]
fn the_memory_estimate_bounds_the_measured_peak_within_3x() {
    eprintln!(
        "{:<95} {:>10} {:>10} {:>10} {:>6} {:>8} {:>8}  peak at",
        "case", "measured", "estimate", "declared", "ratio", "cpu ms", "took ms"
    );
    for run in runs() {
        eprintln!(
            "{:<95} {:>10} {:>10} {:>10} {:>6.2} {:>8} {:>8.0}  {} ({}x{} {} B/px, decoder {} B)",
            run.case,
            run.measured,
            run.estimate.peak_bytes,
            run.declared.peak_bytes,
            run.estimate.peak_bytes as f64 / run.measured as f64,
            run.estimate.cpu_ms,
            run.millis,
            run.estimate.peak_stage,
            run.probe.width,
            run.probe.height,
            run.probe.bytes_per_pixel,
            run.probe.decoder_bytes,
        );
        let Run {
            case,
            estimate,
            declared,
            measured,
            ..
        } = &run;
        assert!(*measured > 0, "{case}");
        assert!(
            estimate.peak_bytes >= *measured,
            "{case}: estimated {} bytes, measured {measured}",
            estimate.peak_bytes
        );
        assert!(
            estimate.peak_bytes <= 3 * measured,
            "{case}: estimated {} bytes, over 3x the measured {measured}",
            estimate.peak_bytes
        );
        // Knowing less only makes the estimate bigger.
        assert!(
            declared.peak_bytes >= estimate.peak_bytes,
            "{case}: {declared:?} against {estimate:?}"
        );
    }
}

#[test]
fn a_generated_16_bit_png_is_probed_from_its_header() {
    let png = png_rgba16(300, 200);
    let probe = codec::probe(&png).expect("a readable header");
    assert_eq!(
        (
            probe.width,
            probe.height,
            probe.bytes_per_pixel,
            probe.alpha
        ),
        (300, 200, 8, true)
    );
    // The decode holds the 16-bit buffer and its 8-bit conversion: 12 bytes a pixel.
    let pipeline = Pipeline::from_text("format:png,compression=1").unwrap();
    let (_, measured) = measure(|| engine::process(&png, &pipeline, &Limits::default()));
    assert!(measured >= 300 * 200 * 12, "{measured}");
}
