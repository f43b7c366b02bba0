//! Image URLs (`GET /img/…`) under load, through a running mesh. Three measurements:
//!
//! 1. **hits**: one URL made once, then `--concurrency` clients (200) asking for it in a
//!    loop for `--seconds`; latency percentiles and requests/s. A closed loop: each client
//!    asks again as soon as it is answered, so the gateway is saturated and the latency
//!    includes queueing. Then the same clients paced to `--rate` requests/s in all (an open
//!    loop), which is what a page's visitors look like: latency is then service time.
//! 2. **misses**: `--misses` new URLs one after another (each a different width, so nothing is
//!    cached), against the same pipeline run in this process on one thread
//!    (`pixelmesh_filter::engine::process`): the p50 of each and their difference, the
//!    mesh's overhead on a miss.
//! 3. **misses under a batch**: a batch of `--batch` images submitted first, then the misses
//!    again while it runs, with the batch's progress at both ends: a miss must not wait for
//!    the batch.
//!
//! `scripts/bench-images` builds the release binaries, starts each role and runs this.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use pixelmesh_filter::{codec::Limits, engine, ops::Pipeline};

/// Image URLs under load, through a running mesh.
#[derive(clap::Parser)]
struct Args {
    /// The gateway's HTTP URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The source image; the corpus' 2560x1600 JPEG by default.
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// Clients asking for the cached image at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds of each hit measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests per second of all clients together in the paced hit measurement.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Misses measured, one after another.
    #[arg(long, default_value_t = 20)]
    misses: usize,
    /// Images in the batch the last misses run beside (0: none).
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

/// Percentiles of `samples` in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |p: f64| {
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    format!(
        "n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

fn p50(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let response = http.get(url).send().await?;
    let status = response.status();
    let served = response
        .headers()
        .get("x-pixelmesh-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.bytes().await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        status.is_success(),
        "{url}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((elapsed, served))
}

/// `clients` loops asking for `url` until `until`; each paced to one request per `every`
/// when given. Every latency.
async fn load(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    until: Instant,
    every: Option<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    let tasks = (0..clients).map(|client| {
        let (http, url) = (http.clone(), url.to_string());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            // Spread the paced clients' first requests over one period.
            if let Some(every) = every {
                tokio::time::sleep(every.mul_f64(client as f64 / clients as f64)).await;
            }
            let mut next = Instant::now();
            while Instant::now() < until {
                let (elapsed, served) = get(&http, &url).await?;
                anyhow::ensure!(served == "hit", "expected a hit, got {served}");
                samples.push(elapsed);
                if let Some(every) = every {
                    next += every;
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            anyhow::Ok(samples)
        })
    });
    let mut all = Vec::new();
    for task in futures::future::join_all(tasks).await {
        all.extend(task??);
    }
    Ok(all)
}

/// `count` misses one after another, each a new width; their latencies.
async fn misses(
    http: &reqwest::Client,
    base: &str,
    blob: &str,
    count: usize,
    first_width: u32,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for i in 0..count {
        let url = format!(
            "{base}/img/unsafe/resize:w={}/format:webp,q=80/blob/{blob}",
            first_width + i as u32
        );
        let (elapsed, served) = get(http, &url).await?;
        anyhow::ensure!(served == "miss", "expected a miss, got {served}");
        samples.push(elapsed);
    }
    Ok(samples)
}

async fn job_progress(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<(u64, u64)> {
    let job: serde_json::Value = http
        .get(format!("{base}/api/v1/jobs/{id}"))
        .send()
        .await?
        .json()
        .await?;
    let ended = job["done"].as_u64().unwrap_or(0) + job["failed"].as_u64().unwrap_or(0);
    Ok((ended, job["total"].as_u64().unwrap_or(0)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| pixelmesh_tests::corpus::dir().join("kite-2560x1600.jpg"));
    let base = args.gateway.trim_end_matches('/').to_string();
    let photo = std::fs::read(&image).with_context(|| format!("{}", image.display()))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let uploaded: serde_json::Value = http
        .post(format!("{base}/api/v1/uploads"))
        .body(photo.clone())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let blob = uploaded["id"].as_str().context("blob id")?.to_string();
    println!("source: {} ({} bytes)", image.display(), photo.len());

    // 1. Hits.
    let url = format!("{base}/img/unsafe/thumbnail:w=320,h=320/format:webp/blob/{blob}");
    let (made, served) = get(&http, &url).await?;
    println!(
        "first request: {served} in {:.1} ms",
        made.as_secs_f64() * 1000.0
    );
    // Every client's connection is opened before the clock starts.
    load(
        &http,
        &url,
        args.concurrency,
        Instant::now() + Duration::from_millis(500),
        None,
    )
    .await?;
    let window = Duration::from_secs(args.seconds);
    let mut closed = load(&http, &url, args.concurrency, Instant::now() + window, None).await?;
    println!(
        "hits, {} clients, closed loop: {:.0} requests/s, {}",
        args.concurrency,
        closed.len() as f64 / window.as_secs_f64(),
        summary(&mut closed)
    );
    let every = Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64);
    let mut open = load(
        &http,
        &url,
        args.concurrency,
        Instant::now() + window,
        Some(every),
    )
    .await?;
    println!(
        "hits, {} clients, {} requests/s in all: {}",
        args.concurrency,
        args.rate,
        summary(&mut open)
    );

    // 2. Misses against the same work in this process.
    let mut local = Vec::new();
    for i in 0..args.misses {
        let pipeline = Pipeline::from_text(&format!("resize:w={}/format:webp,q=80", 700 + i))?;
        let started = Instant::now();
        engine::process(&photo, &pipeline, &Limits::default())?;
        local.push(started.elapsed());
    }
    let mut mesh = misses(&http, &base, &blob, args.misses, 700).await?;
    let (local_p50, mesh_p50) = (p50(&mut local), p50(&mut mesh));
    println!("in process, one thread: {}", summary(&mut local));
    println!("misses through the mesh: {}", summary(&mut mesh));
    println!("miss overhead at p50: {:.1} ms", mesh_p50 - local_p50);

    // 3. Misses while a batch runs.
    if args.batch > 0 {
        let mut form =
            reqwest::multipart::Form::new().text("pipeline", "resize:w=1920/format:jpeg,q=85");
        for i in 0..args.batch {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(photo.clone()).file_name(format!("{i}.jpg")),
            );
        }
        let job: serde_json::Value = http
            .post(format!("{base}/api/v1/jobs"))
            .multipart(form)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = job["id"].as_str().context("job id")?.to_string();
        // Wait for the batch to be under way.
        while job_progress(&http, &base, &id).await?.0 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (before, total) = job_progress(&http, &base, &id).await?;
        let started = Instant::now();
        let mut during = misses(&http, &base, &blob, args.misses, 1700).await?;
        let took = started.elapsed();
        let (after, _) = job_progress(&http, &base, &id).await?;
        println!(
            "misses during a batch of {total}: {} (the batch went from {before} to {after} of {total} ended in those {:.1} s)",
            summary(&mut during),
            took.as_secs_f64()
        );
        println!(
            "miss overhead at p50 during the batch: {:.1} ms",
            p50(&mut during) - local_p50
        );
        http.post(format!("{base}/api/v1/jobs/{id}/cancel"))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}
