//! End-to-end load tool: the same pipeline in-process and through a running mesh, side by
//! side. Start a mesh first (`scripts/run.sh`, or `pixelmesh all` from a release build), then
//! `cargo run --release -p pixelmesh-tests --bin pixelmesh-load -- --images 40`.
//!
//! Pipeline: 4K JPEG (opal-3840x2160.png re-encoded at q90) → resize 1920 → blur σ2 →
//! brightness 1.1 → JPEG q85.

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
    threads: usize,
}

fn args() -> Args {
    let mut args = Args {
        gateway: "http://127.0.0.1:8080".into(),
        images: 40,
        latency_runs: 5,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--gateway" => args.gateway = value,
            "--images" => args.images = value.parse().expect("--images N"),
            "--latency-runs" => args.latency_runs = value.parse().expect("--latency-runs N"),
            "--threads" => args.threads = value.parse().expect("--threads N"),
            other => panic!(
                "unknown flag {other}; flags: --gateway URL --images N --latency-runs N --threads N"
            ),
        }
    }
    args
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
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

    // In-process, one pipeline per core, like a filter with default concurrency.
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let (input, pipeline, next) = (input.clone(), pipeline.clone(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < args.images {
                    engine::process(&input, &pipeline, &limits).expect("process");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker thread");
    }
    let local_rate = args.images as f64 / start.elapsed().as_secs_f64();

    let runtime = tokio::runtime::Runtime::new()?;
    let (latency, mesh_rate) = runtime.block_on(async {
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
                })
                .collect(),
        };
        let mut run = async |n: usize| -> anyhow::Result<Duration> {
            let start = Instant::now();
            let job = client.submit_job(job_of(n)).await?.into_inner();
            let id = job.summary.unwrap_or_default().id;
            let (_, job) = api::watch_to_end(&mut client, &id, Duration::from_secs(600)).await;
            let elapsed = start.elapsed();
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
        let batch = run(args.images).await?;
        anyhow::Ok((median(latencies), args.images as f64 / batch.as_secs_f64()))
    })?;

    println!(
        "pipeline: 4K JPEG (3840x2160) -> resize 1920 -> blur 2 -> brightness 1.1 -> JPEG q85"
    );
    println!(
        "in-process, 1 thread          {:>8.1} ms/image",
        per_image.as_secs_f64() * 1e3
    );
    println!(
        "in-process, {} threads         {:>8.2} images/s ({} images)",
        args.threads, local_rate, args.images
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
        "mesh / in-process throughput  {:>8.1} %",
        mesh_rate / local_rate * 100.0
    );
    Ok(())
}
