//! Throughput of every operation, decoder and encoder, in megapixels per second.
//!
//! Criterion prints `Melem/s`: each element is one pixel of the op's input, so Melem/s is
//! megapixels per second on one core. The ops run on a 4K slice (3840x2160) of a real photo;
//! decoders on that slice encoded in each format, plus the whole 5K JPEG at every DCT scale;
//! encoders on a 1920x1080 downscale, a typical output.
//!
//! Ops are built from the text form, so a new op is one line in `OPS`; a line that does not
//! parse (an op not written yet) is skipped with a note instead of failing the build.
//!
//! `cargo bench -p pixelmesh-filter --bench ops` (about three minutes on 2 cores);
//! `-- decode` or `-- op/blur` runs a subset.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pixelmesh_filter::codec::{self, Encoding, Limits};
use pixelmesh_filter::ops::{Bitmap, FileFormat, Pipeline};

// The allocator the pixelmesh binary uses, so buffer reuse costs what it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PHOTO_5K: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/safe-landing-5120x2880.jpg"
);

/// One line per op: what it is called in the report, and its text form.
const OPS: &[(&str, &str)] = &[
    ("resize_lanczos3_1920", "resize:w=1920"),
    ("resize_lanczos3_256", "resize:w=256"),
    ("resize_bilinear_1920", "resize:w=1920,filter=bilinear"),
    ("resize_cover_1080sq", "resize:w=1080,h=1080,fit=cover"),
    ("thumbnail_256", "thumbnail:w=256"),
    ("crop_1920x1080", "crop:w=1920,h=1080,g=center"),
    ("crop_smart_1080sq", "crop:w=1080,h=1080,g=smart"),
    ("crop_entropy_1080sq", "crop:w=1080,h=1080,g=entropy"),
    ("crop_face_1080sq", "crop:w=1080,h=1080,g=face"),
    (
        "resize_cover_smart_1080sq",
        "resize:w=1080,h=1080,fit=cover,g=smart",
    ),
    ("blur_faces", "blur_faces"),
    ("flip", "flip"),
    ("flop", "flop"),
    ("rotate_90", "rotate:90"),
    ("auto_orient", "auto_orient"),
    ("blur_sigma2", "blur:sigma=2"),
    ("blur_sigma10", "blur:sigma=10"),
    ("sharpen_sigma1", "sharpen:sigma=1"),
    ("edge", "edge"),
    ("pixelate_16", "pixelate:16"),
    ("brightness_1.1", "brightness:1.1"),
    ("contrast_1.2", "contrast:1.2"),
    ("gamma_2.2", "gamma:2.2"),
    ("saturation_1.3", "saturation:1.3"),
    ("hue_90", "hue:90"),
    ("grayscale", "grayscale"),
    ("sepia", "sepia"),
    ("invert", "invert"),
    ("threshold_128", "threshold:128"),
];

/// The 5K photo's middle 3840x2160.
fn slice_4k(photo: &Bitmap) -> Bitmap {
    let (w, h) = (3840usize, 2160usize);
    let channels = photo.channels();
    let stride = photo.width() as usize * channels;
    let left = (photo.width() as usize - w) / 2 * channels;
    let top = (photo.height() as usize - h) / 2;
    let data = photo
        .data()
        .chunks_exact(stride)
        .skip(top)
        .take(h)
        .flat_map(|row| &row[left..left + w * channels])
        .copied()
        .collect();
    Bitmap::new(w as u32, h as u32, photo.has_alpha(), data).expect("slice size")
}

fn pixels(image: &Bitmap) -> Throughput {
    Throughput::Elements(u64::from(image.width()) * u64::from(image.height()))
}

fn ops(c: &mut Criterion) {
    let limits = Limits::default();
    let jpeg_5k = std::fs::read(PHOTO_5K).unwrap_or_else(|err| panic!("{PHOTO_5K}: {err}"));
    let photo = codec::decode(&jpeg_5k, &limits).expect("decode 5k").image;
    let image = slice_4k(&photo);

    let mut group = c.benchmark_group("op");
    group.throughput(pixels(&image));
    for &(name, text) in OPS {
        let op = match Pipeline::from_text(text) {
            Ok(pipeline) => pipeline.ops()[0].clone(),
            Err(err) => {
                eprintln!("skipping op/{name}: `{text}` does not parse here: {err:?}");
                continue;
            }
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || image.clone(),
                |image| op.apply(image).expect("op"),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let jpeg_5k = std::fs::read(PHOTO_5K).unwrap_or_else(|err| panic!("{PHOTO_5K}: {err}"));
    let photo = codec::decode(&jpeg_5k, &limits).expect("decode 5k").image;
    let image = slice_4k(&photo);

    let mut group = c.benchmark_group("decode_5k_jpeg");
    group.throughput(pixels(&photo));
    for (name, min_size) in [
        ("full", (u32::MAX, u32::MAX)),
        ("half", (2560, 1440)),
        ("quarter", (1280, 720)),
        ("eighth", (1, 1)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| codec::decode_shrunk(black_box(&jpeg_5k), &limits, min_size).expect("decode"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode_4k");
    group.throughput(pixels(&image));
    for format in FileFormat::ALL {
        let bytes = codec::encode(&image, format, 90).expect("encode 4k");
        group.bench_function(format.name(), |b| {
            b.iter(|| codec::decode(black_box(&bytes), &limits).expect("decode"))
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let limits = Limits::default();
    let jpeg_5k = std::fs::read(PHOTO_5K).unwrap_or_else(|err| panic!("{PHOTO_5K}: {err}"));
    let pipeline = Pipeline::from_text("resize:w=1920").expect("resize parses");
    let photo = codec::decode(&jpeg_5k, &limits).expect("decode 5k").image;
    let image = pipeline.ops()[0].apply(photo).expect("resize");

    let mut group = c.benchmark_group("encode_1920");
    group.throughput(pixels(&image));
    let mut encodings = Vec::new();
    for format in FileFormat::ALL {
        encodings.push((format.name().to_string(), Encoding::new(format)));
    }
    encodings.push((
        "jpeg_progressive".into(),
        Encoding {
            progressive: true,
            ..Encoding::new(FileFormat::Jpeg)
        },
    ));
    for (name, encoding) in &encodings {
        group.bench_function(name.as_str(), |b| {
            b.iter(|| codec::encode_with(black_box(&image), encoding).expect("encode"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = ops, decode, encode
}
criterion_main!(benches);
