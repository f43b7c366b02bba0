//! End-to-end load tool: the same pipeline in-process and through a running mesh, side by
//! side. Start a mesh first (`scripts/run.sh`, or `pixelmesh all` from a release build), then
//! `cargo run --release -p pixelmesh-tests --bin pixelmesh-load -- --images 40`.
//!
//! Pipeline: 4K JPEG (opal-3840x2160.png re-encoded at q90) → resize 1920 → blur σ2 →
//! brightness 1.1 → JPEG q85.
//!
//! In-process and mesh batches alternate for `--rounds` rounds and medians are reported, so a
//! noisy neighbour slows both sides alike instead of skewing the ratio.

// The same allocator as the `pixelmesh` binary, so in-process and mesh run the same code.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    io::Cursor,
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::{Duration, Instant},
};

use pixelmesh_filter::{codec::Limits, engine, ops::Pipeline};
use pixelmesh_proto::v1::{ImageInput, JobState, SubmitJobRequest, gateway_client::GatewayClient};
use pixelmesh_tests::{api, corpus};

const PIPELINE: &str = r#"[{"op":"resize","width":1920},{"op":"blur","sigma":2},{"op":"brightness","factor":1.1},{"op":"format","format":"jpeg","quality":85}]"#;

struct Args {
    gateway: String,
    images: usize,
    latency_runs: usize,
    rounds: usize,
    threads: usize,
}

fn args() -> Args {
    let mut args = Args {
        gateway: "http://127.0.0.1:8080".into(),
        images: 40,
        latency_runs: 5,
        rounds: 3,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--gateway" => args.gateway = value,
            "--images" => args.images = value.parse().expect("--images N"),
            "--latency-runs" => args.latency_runs = value.parse().expect("--latency-runs N"),
            "--rounds" => args.rounds = value.parse().expect("--rounds N"),
            "--threads" => args.threads = value.parse().expect("--threads N"),
            other => panic!(
                "unknown flag {other}; flags: --gateway URL --images N --latency-runs N \
                 --rounds N --threads N"
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
fn in_process_rate(
    input: &Arc<Vec<u8>>,
    pipeline: &Arc<Pipeline>,
    threads: usize,
    images: usize,
) -> f64 {
    let limits = Limits::default();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (input, pipeline, next) = (input.clone(), pipeline.clone(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < images {
                    engine::process(&input, &pipeline, &limits).expect("process");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }
    images as f64 / start.elapsed().as_secs_f64()
}

fn four_k_jpeg() -> Vec<u8> {
    let png = image::load_from_memory(&corpus::read("opal-3840x2160.png")).expect("opal decodes");
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&png.to_rgb8())
        .expect("jpeg encode");
    out.into_inner()
}

fn main() -> anyhow::Result<()> {
    let args = args();
    let input = Arc::new(four_k_jpeg());
    let pipeline = Arc::new(Pipeline::from_json(PIPELINE)?);
    let limits = Limits::default();

    // In-process, one thread: per-image time.
    let mut single = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        engine::process(&input, &pipeline, &limits)?;
        single.push(start.elapsed());
    }
    let per_image = median(single);

    let runtime = tokio::runtime::Runtime::new()?;
    let (latency, rounds) = runtime.block_on(async {
        let mut client = GatewayClient::connect(args.gateway.clone())
            .await?
            .max_decoding_message_size(64 * 1024 * 1024);
        let blob = api::upload(&mut client, "opal-4k.jpg", &input).await;
        let job_of = |n: usize| SubmitJobRequest {
            pipeline: pipeline.to_proto(),
            inputs: (0..n)
                .map(|i| ImageInput {
                    blob_id: blob.clone(),
                    name: format!("opal-{i}.jpg"),
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
            let local = in_process_rate(&input, &pipeline, args.threads, args.images);
            let mesh = args.images as f64 / run(args.images).await?.as_secs_f64();
            println!(
                "round {round}: in-process {local:6.2} images/s, mesh {mesh:6.2} images/s, \
                 {:5.1} %",
                mesh / local * 100.0
            );
            rounds.push((local, mesh));
        }
        anyhow::Ok((median(latencies), rounds))
    })?;
    let local_rate = median(rounds.iter().map(|r| r.0).collect());
    let mesh_rate = median(rounds.iter().map(|r| r.1).collect());
    let ratio = median(rounds.iter().map(|r| r.1 / r.0).collect());

    println!(
        "pipeline: 4K JPEG (3840x2160) -> resize 1920 -> blur 2 -> brightness 1.1 -> JPEG q85"
    );
    println!(
        "in-process, 1 thread          {:>8.1} ms/image",
        per_image.as_secs_f64() * 1e3
    );
    println!(
        "in-process, {} threads         {:>8.2} images/s ({} images, median of {} rounds)",
        args.threads,
        local_rate,
        args.images,
        rounds.len()
    );
    println!(
        "mesh single-image latency     {:>8.1} ms (median of {}, submit -> completed event)",
        latency.as_secs_f64() * 1e3,
        args.latency_runs
    );
    println!(
        "mesh throughput               {:>8.2} images/s ({} images, submit -> completed)",
        mesh_rate, args.images
    );
    println!(
        "mesh / in-process throughput  {:>8.1} % (median of the rounds' ratios)",
        ratio * 100.0
    );
    Ok(())
}
