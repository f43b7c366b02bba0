//! Where a content-aware crop goes, on a 1920x1080 photo: the smart (attention) and entropy
//! searches, and face detection, each on one core. The target for the searches is
//! under 5 ms.
//!
//! `cargo bench -p pixelmesh-filter --bench smart_crop`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pixelmesh_filter::ops::faces;
use pixelmesh_filter::ops::interest::{self, Strategy};
use pixelmesh_filter::ops::{Bitmap, Pipeline};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn photo(path: &str, width: u32, height: u32) -> Bitmap {
    let decoded = image::open(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let rgb = decoded
        .resize_exact(width, height, image::imageops::FilterType::Triangle)
        .to_rgb8();
    Bitmap::new(width, height, false, rgb.into_raw()).expect("decoded size")
}

fn placement(c: &mut Criterion) {
    let kite = photo(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/corpus/kite-2560x1600.jpg"
        ),
        1920,
        1080,
    );
    let portraits = photo(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pipeline/tests/data/three-portraits-1125x432.jpg"
        ),
        1920,
        737,
    );
    let mut group = c.benchmark_group("place_1920x1080");
    group.measurement_time(Duration::from_secs(5));
    for (name, strategy) in [
        ("smart", Strategy::Attention),
        ("entropy", Strategy::Entropy),
    ] {
        for (label, size) in [("1080sq", (1080, 1080)), ("400x400", (400, 400))] {
            group.bench_function(format!("{name}_{label}"), |b| {
                b.iter(|| interest::focus(black_box(&kite), size, strategy).unwrap())
            });
        }
    }
    group.bench_function("faces_none", |b| {
        b.iter(|| faces::detect(black_box(&kite)).unwrap())
    });
    group.finish();
    let mut group = c.benchmark_group("place_1920x737");
    group.sample_size(20);
    group.bench_function("faces_three", |b| {
        b.iter(|| faces::detect(black_box(&portraits)).unwrap())
    });
    group.finish();
    let mut group = c.benchmark_group("crop_1920x1080");
    group.sample_size(30);
    for text in [
        "crop:w=1080,h=1080",
        "crop:w=1080,h=1080,g=smart",
        "crop:w=1080,h=1080,g=entropy",
        "resize:w=400,h=400,fit=cover,g=smart",
    ] {
        let op = Pipeline::from_text(text).unwrap().ops()[0].clone();
        group.bench_function(text, |b| b.iter(|| op.apply(kite.clone()).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
