//! End-to-end load tool: the same pipeline in-process, in libvips as a plain process pool, and
//! through a running mesh, side by side. Start a mesh first (`scripts/run.sh`, or `pixelmesh
//! all` from a release build), then `cargo run --release -p pixelmesh-tests --bin
//! pixelmesh-load -- --images 96`; `scripts/bench-mesh` does all of it, for a `file://` and a
//! Garage store.
//!
//! Pipeline (`--pipeline`, default `reference`): distinct 4K JPEGs (the corpus photographs
//! cropped to 3840x2160, each in several variants, q90) → resize 1920 → blur σ2 → brightness
//! 1.1 → JPEG q85. The per-format ones resize the 4K JPEGs to 1920 and write PNG (compression
//! 6, `png`), WebP q80 (`webp`) or AVIF q60 effort 4 (`avif`), or resize 4K PNGs (the same
//! pictures) to 1920 as JPEG q85 (`png-in`). The inputs are made once into
//! `target/bench-inputs`. The mesh's inputs are uploaded before the clock starts; its time
//! runs from submit to the job's completed event.
//!
//! libvips (`scripts/vips-pool`, pyvips from `.tools/bench-venv`) runs in `--threads`
//! processes of one core each. In-process, libvips and mesh batches alternate for `--rounds`
//! rounds and medians are reported, so a noisy neighbour slows every side alike instead of
//! skewing the ratios.

// The same allocator as the `pixelmesh` binary, so in-process and mesh run the same code.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    io::Cursor,
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::{Duration, Instant},
};

use image::ImageEncoder;
use pixelmesh_filter::{codec::Limits, engine, ops::Pipeline};
use pixelmesh_proto::v1::{ImageInput, JobState, SubmitJobRequest, gateway_client::GatewayClient};
use pixelmesh_tests::{api, corpus, workspace_root};

/// The pipelines `--pipeline` names: (name, pipeline in text form, input extension, what it
/// is, for the report). `scripts/vips-pool --pipeline` does the same work in libvips.
const PIPELINES: &[(&str, &str, &str, &str)] = &[
    (
        "reference",
        "resize:w=1920/blur:sigma=2/brightness:1.1/format:jpeg,q=85",
        "jpg",
        "4K JPEGs (3840x2160) -> resize 1920 -> blur 2 -> brightness 1.1 -> JPEG q85",
    ),
    (
        "png",
        "resize:w=1920/format:png,compression=6",
        "jpg",
        "4K JPEGs -> resize 1920 -> PNG compression 6",
    ),
    (
        "webp",
        "resize:w=1920/format:webp,q=80",
        "jpg",
        "4K JPEGs -> resize 1920 -> WebP q80",
    ),
    (
        "avif",
        "resize:w=1920/format:avif,q=60,effort=4",
        "jpg",
        "4K JPEGs -> resize 1920 -> AVIF q60 effort 4",
    ),
    (
        "png-in",
        "resize:w=1920/format:jpeg,q=85",
        "png",
        "4K PNGs -> resize 1920 -> JPEG q85",
    ),
];

struct Args {
    gateway: String,
    pipeline: String,
    images: usize,
    latency_runs: usize,
    rounds: usize,
    threads: usize,
    vips: bool,
}

fn args() -> Args {
    let mut args = Args {
        gateway: "http://127.0.0.1:8080".into(),
        pipeline: "reference".into(),
        images: 96,
        latency_runs: 5,
        rounds: 3,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        vips: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-vips" {
            args.vips = false;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--gateway" => args.gateway = value,
            "--pipeline" => args.pipeline = value,
            "--images" => args.images = value.parse().expect("--images N"),
            "--latency-runs" => args.latency_runs = value.parse().expect("--latency-runs N"),
            "--rounds" => args.rounds = value.parse().expect("--rounds N"),
            "--threads" => args.threads = value.parse().expect("--threads N"),
            other => panic!(
                "unknown flag {other}; flags: --gateway URL --pipeline NAME --images N \
                 --latency-runs N --rounds N --threads N --no-vips"
            ),
        }
    }
    args
}

fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[values.len() / 2]
}

/// Images per second with one pipeline per thread, like a filter with default concurrency.
fn in_process_rate(inputs: &Arc<Vec<Vec<u8>>>, pipeline: &Arc<Pipeline>, threads: usize) -> f64 {
    let images = inputs.len();
    let limits = Limits::default();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (inputs, pipeline, next) = (inputs.clone(), pipeline.clone(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = inputs.get(i) else { break };
                    engine::process(input, &pipeline, &limits).expect("process");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }
    images as f64 / start.elapsed().as_secs_f64()
}

/// `count` distinct 4K JPEGs (q90) or PNGs (`extension` "png", compression 6), made once
/// into `target/bench-inputs`: each corpus photograph cropped to 3840x2160, in variants of
/// brightness and mirroring. Their paths.
fn distinct_4k(count: usize, extension: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let dir = workspace_root().join("target").join("bench-inputs");
    std::fs::create_dir_all(&dir)?;
    let paths: Vec<_> = (0..count)
        .map(|i| dir.join(format!("4k-{i:03}.{extension}")))
        .collect();
    if paths.iter().all(|p| p.is_file()) {
        return Ok(paths);
    }
    eprintln!(
        "making {count} distinct 4K {extension} files in {} (once)",
        dir.display()
    );
    let photos: Vec<image::RgbImage> = corpus::all()
        .into_iter()
        .map(|(_, bytes)| {
            image::load_from_memory(&bytes)
                .expect("corpus photo decodes")
                .resize_to_fill(3840, 2160, image::imageops::FilterType::Triangle)
                .to_rgb8()
        })
        .collect();
    for (i, path) in paths.iter().enumerate() {
        let photo = &photos[i % photos.len()];
        let variant = i / photos.len();
        let mut image = image::imageops::colorops::brighten(photo, variant as i32 * 3 - 15);
        if variant % 2 == 1 {
            image::imageops::flip_horizontal_in_place(&mut image);
        }
        let mut out = Cursor::new(Vec::new());
        if extension == "png" {
            image::codecs::png::PngEncoder::new(&mut out).write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )?;
        } else {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&image)?;
        }
        std::fs::write(path, out.into_inner())?;
    }
    Ok(paths)
}

/// libvips over the same files in `procs` processes: images per second, or `None` when
/// pyvips is not installed.
fn vips_rate(paths: &[std::path::PathBuf], procs: usize, pipeline: &str) -> Option<f64> {
    let output = std::process::Command::new(workspace_root().join("scripts/vips-pool"))
        .arg("--procs")
        .arg(procs.to_string())
        .arg("--pipeline")
        .arg(pipeline)
        .args(paths)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "libvips side skipped: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let seconds: f64 = line
        .split("\"seconds\": ")
        .nth(1)?
        .split([',', '}'])
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(paths.len() as f64 / seconds)
}

fn main() -> anyhow::Result<()> {
    let args = args();
    let &(name, text, extension, description) = PIPELINES
        .iter()
        .find(|p| p.0 == args.pipeline)
        .ok_or_else(|| {
            let names: Vec<_> = PIPELINES.iter().map(|p| p.0).collect();
            anyhow::anyhow!("--pipeline must be one of {}", names.join(", "))
        })?;
    let paths = distinct_4k(args.images, extension)?;
    let inputs: Arc<Vec<Vec<u8>>> =
        Arc::new(paths.iter().map(std::fs::read).collect::<Result<_, _>>()?);
    let pipeline = Arc::new(Pipeline::parse(text)?);
    let limits = Limits::default();

    // In-process, one thread: per-image time.
    let mut single = Vec::new();
    for input in inputs.iter().take(5) {
        let start = Instant::now();
        engine::process(input, &pipeline, &limits)?;
        single.push(start.elapsed());
    }
    let per_image = median(single);

    let runtime = tokio::runtime::Runtime::new()?;
    let (latency, upload, rounds) = runtime.block_on(async {
        let mut client = GatewayClient::connect(args.gateway.clone())
            .await?
            .max_decoding_message_size(64 * 1024 * 1024);
        let uploading = Instant::now();
        let mut blobs = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            blobs.push(api::upload(&mut client, &format!("4k-{i:03}.{extension}"), input).await);
        }
        let upload = uploading.elapsed();
        let job_of = |n: usize| SubmitJobRequest {
            pipeline: pipeline.to_proto(),
            inputs: blobs
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, blob)| ImageInput {
                    blob_id: blob.clone(),
                    name: format!("4k-{i:03}.{extension}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut run = async |n: usize| -> anyhow::Result<Duration> {
            let start = Instant::now();
            let job = client.submit_job(job_of(n)).await?.into_inner();
            let submitted = start.elapsed();
            let id = job.summary.unwrap_or_default().id;
            let (_, job) = api::watch_to_end(&mut client, &id, Duration::from_secs(600)).await;
            let elapsed = start.elapsed();
            if std::env::var_os("PIXELMESH_LOAD_VERBOSE").is_some() {
                eprintln!("job of {n}: submit {submitted:?}, end {elapsed:?}");
            }
            let state = job.summary.unwrap_or_default().state();
            anyhow::ensure!(
                state == JobState::Completed,
                "job {id} ended {}",
                state.label()
            );
            Ok(elapsed)
        };
        run(1).await?; // warm-up: connections, consumer, page cache
        let mut latencies = Vec::new();
        for _ in 0..args.latency_runs {
            latencies.push(run(1).await?);
        }
        let mut rounds = Vec::new();
        for round in 1..=args.rounds.max(1) {
            let local = in_process_rate(&inputs, &pipeline, args.threads);
            let vips = if args.vips {
                vips_rate(&paths, args.threads, name)
            } else {
                None
            };
            let mesh = inputs.len() as f64 / run(inputs.len()).await?.as_secs_f64();
            let vips_text = vips.map_or("-".to_string(), |v| format!("{v:6.2}"));
            let versus = vips.map_or("-".to_string(), |v| format!("{:5.2}x", mesh / v));
            println!(
                "round {round}: in-process {local:6.2} images/s, libvips {vips_text} images/s, \
                 mesh {mesh:6.2} images/s; mesh/libvips {versus}, mesh/in-process {:5.1} %",
                mesh / local * 100.0
            );
            rounds.push((local, mesh, vips));
        }
        anyhow::Ok((median(latencies), upload, rounds))
    })?;
    let local_rate = median(rounds.iter().map(|r| r.0).collect());
    let mesh_rate = median(rounds.iter().map(|r| r.1).collect());
    let ratio = median(rounds.iter().map(|r| r.1 / r.0).collect());
    let vips: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.2.map(|v| (v, r.1 / v)))
        .collect();

    println!("pipeline {name}: {} distinct {description}", inputs.len());
    println!(
        "in-process, 1 thread          {:>8.1} ms/image",
        per_image.as_secs_f64() * 1e3
    );
    println!(
        "in-process, {} threads         {:>8.2} images/s (median of {} rounds)",
        args.threads,
        local_rate,
        rounds.len()
    );
    if !vips.is_empty() {
        println!(
            "libvips, {} processes          {:>8.2} images/s (median of {} rounds)",
            args.threads,
            median(vips.iter().map(|v| v.0).collect()),
            vips.len()
        );
    }
    println!(
        "mesh upload (before timing)   {:>8.2} s for {} images",
        upload.as_secs_f64(),
        inputs.len()
    );
    println!(
        "mesh single-image latency     {:>8.1} ms (median of {}, submit -> completed event)",
        latency.as_secs_f64() * 1e3,
        args.latency_runs
    );
    println!(
        "mesh throughput               {:>8.2} images/s (submit -> completed)",
        mesh_rate
    );
    if !vips.is_empty() {
        println!(
            "mesh / libvips throughput     {:>8.2} x (median of the rounds' ratios)",
            median(vips.iter().map(|v| v.1).collect())
        );
    }
    println!(
        "mesh / in-process throughput  {:>8.1} % (median of the rounds' ratios)",
        ratio * 100.0
    );
    Ok(())
}
