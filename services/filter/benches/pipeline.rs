//! Where the time goes for the reference job: a 4K JPEG resized to 1920 wide (Lanczos3),
//! blurred (sigma 2), brightened 10 % and written as JPEG q85, on one core.
//!
//! The corpus holds the 4K photo as PNG; it is re-encoded once to a JPEG q90 in setup so the
//! benchmark decodes a realistic JPEG. Short runs (10 samples) keep the whole bench near a
//! minute on a small machine.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pixelmesh_filter::codec::{self, Limits};
use pixelmesh_filter::engine;
use pixelmesh_filter::ops::{Blur, FileFormat, Fit, Pipeline, Resize};

// The allocator the pixelmesh binary uses: glibc returns the 25-45 MB image buffers to the OS
// after each image and faulting them back in costs about 30 % of a decode.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const OPAL_4K: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/opal-3840x2160.png"
);

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let png = std::fs::read(OPAL_4K).unwrap_or_else(|err| panic!("reading {OPAL_4K}: {err}"));
    let photo = codec::decode(&png, &limits)
        .expect("decode corpus png")
        .image;
    let jpeg_4k = codec::encode(&photo, FileFormat::Jpeg, 90).expect("encode 4k jpeg");

    let pipeline = Pipeline::from_json(
        r#"[{"op":"resize","width":1920},{"op":"blur","sigma":2},
            {"op":"brightness","factor":1.1},{"op":"format","format":"jpeg","quality":85}]"#,
    )
    .expect("valid pipeline");
    let resize = Resize::new(1920, 0, Fit::Inside).expect("valid resize");
    let blur = Blur::new(2.0).expect("valid blur");

    let decoded = codec::decode(&jpeg_4k, &limits)
        .expect("decode 4k jpeg")
        .image;
    let resized = resize.apply(decoded.clone()).expect("resize");
    assert_eq!((resized.width(), resized.height()), (1920, 1080));

    c.bench_function("full_pipeline_4k", |b| {
        b.iter(|| engine::process(black_box(&jpeg_4k), &pipeline, &limits).expect("process"))
    });
    c.bench_function("decode_4k_jpeg", |b| {
        b.iter(|| codec::decode(black_box(&jpeg_4k), &limits).expect("decode"))
    });
    c.bench_function("resize_4k_to_1920", |b| {
        b.iter_batched(
            || decoded.clone(),
            |image| resize.apply(image).expect("resize"),
            BatchSize::LargeInput,
        )
    });
    c.bench_function("blur_1920_sigma2", |b| {
        b.iter_batched(
            || resized.clone(),
            |image| blur.apply(image).expect("blur"),
            BatchSize::LargeInput,
        )
    });
    c.bench_function("encode_jpeg_1920_q85", |b| {
        b.iter(|| codec::encode(black_box(&resized), FileFormat::Jpeg, 85).expect("encode"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
