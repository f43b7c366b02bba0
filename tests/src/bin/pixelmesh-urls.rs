//! A URL list at the seed systems' scale, through a running mesh: serves small PNGs from an
//! HTTP server on loopback, uploads a CSV of `--urls` of their URLs to `POST /api/v1/jobs`
//! (generated while it streams, never held), waits for the batch to end, then downloads the
//! batch's streamed CSV export. Reports each stage's time, URLs per second, and with `--pid
//! NAME=PID` each process's peak resident memory (VmHWM).
//!
//! `scripts/bench-urls` builds the release binaries, starts each role as its own process and
//! runs this; the filters must allow loopback (`--fetch-allow-networks 127.0.0.1/32`).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::{Router, extract::Path, http::header, routing::get};
use futures::StreamExt as _;

struct Args {
    gateway: String,
    urls: usize,
    pipeline: String,
    pids: Vec<(String, u32)>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        gateway: "http://127.0.0.1:8080".into(),
        urls: 1_000_000,
        pipeline: "analyze".into(),
        pids: Vec::new(),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || {
            given
                .next()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--gateway" => args.gateway = value()?,
            "--urls" => args.urls = value()?.parse()?,
            "--pipeline" => args.pipeline = value()?,
            "--pid" => {
                let value = value()?;
                let (name, pid) = value.split_once('=').context("--pid NAME=PID")?;
                args.pids.push((name.to_string(), pid.parse()?));
            }
            other => anyhow::bail!(
                "unknown flag {other}: --gateway URL, --urls N, --pipeline TEXT, --pid NAME=PID"
            ),
        }
    }
    Ok(args)
}

/// Peak and current resident memory of `pid`, in MiB, from /proc.
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Serves 16 different 64x48 PNGs at `/img/{n}.png` (n mod 16), so every URL is its own.
async fn image_server() -> anyhow::Result<std::net::SocketAddr> {
    let images: Vec<Vec<u8>> = (0..16u8)
        .map(|seed| pixelmesh_tests::png(64, 48, seed * 16))
        .collect();
    let app = Router::new().route(
        "/img/{name}",
        get(move |Path(name): Path<String>| {
            let n = name.trim_end_matches(".png").parse::<usize>().unwrap_or(0);
            let image = images[n % images.len()].clone();
            async move { ([(header::CONTENT_TYPE, "image/png")], image) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The CSV, made in pieces of 10 000 rows as the upload asks for them.
fn csv_body(addr: std::net::SocketAddr, urls: usize) -> reqwest::Body {
    const ROWS: usize = 10_000;
    let pieces = futures::stream::iter((0..urls.div_ceil(ROWS)).map(move |piece| {
        let mut text = String::with_capacity(ROWS * 48);
        if piece == 0 {
            text.push_str("name,url\n");
        }
        for n in piece * ROWS..((piece + 1) * ROWS).min(urls) {
            text.push_str(&format!("photo {n},http://{addr}/img/{n}.png\n"));
        }
        Ok::<_, std::io::Error>(text.into_bytes())
    }));
    reqwest::Body::wrap_stream(pieces)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let addr = image_server().await?;
    let http = reqwest::Client::new();
    let base = args.gateway.trim_end_matches('/');
    println!(
        "{} urls, pipeline {:?}, images from http://{addr}",
        args.urls, args.pipeline
    );

    let start = Instant::now();
    let form = reqwest::multipart::Form::new()
        .text("pipeline", args.pipeline.clone())
        .part(
            "urls",
            reqwest::multipart::Part::stream(csv_body(addr, args.urls)).file_name("urls.csv"),
        );
    let response = http
        .post(format!("{base}/api/v1/jobs"))
        .multipart(form)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.as_u16() == 202, "submit answered {status}: {body}");
    let submitted = start.elapsed();
    let parent = body["parent_id"]
        .as_str()
        .context("no parent_id: the list made one job")?
        .to_string();
    let jobs = body["jobs"].as_array().map_or(0, Vec::len);
    println!(
        "upload and submit: {:.1} s ({:.0} urls/s), batch {parent}: {jobs} jobs",
        submitted.as_secs_f64(),
        args.urls as f64 / submitted.as_secs_f64()
    );

    let (mut done, mut failed);
    let mut last_print = Instant::now();
    loop {
        let view = Instant::now();
        let batch: serde_json::Value = http
            .get(format!("{base}/api/v1/batches/{parent}"))
            .send()
            .await?
            .json()
            .await?;
        let view = view.elapsed();
        done = batch["done"].as_u64().unwrap_or(0);
        failed = batch["failed"].as_u64().unwrap_or(0);
        let state = batch["state"].as_str().unwrap_or_default().to_string();
        if last_print.elapsed() > Duration::from_secs(30) || state != "running" {
            last_print = Instant::now();
            let ended = done + failed;
            println!(
                "{:>6.0} s: {state}, {ended} ended ({failed} failed), {:.0} urls/s so far; batch view {:.0} ms",
                start.elapsed().as_secs_f64(),
                ended as f64 / start.elapsed().as_secs_f64(),
                view.as_secs_f64() * 1e3
            );
        }
        if !matches!(state.as_str(), "running" | "queued") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let processed = start.elapsed();

    let exporting = Instant::now();
    let mut export = http
        .get(format!("{base}/api/v1/batches/{parent}/analysis.csv"))
        .send()
        .await?
        .error_for_status()?
        .bytes_stream();
    let (mut rows, mut bytes, mut first_byte) = (0usize, 0usize, None);
    while let Some(chunk) = export.next().await {
        let chunk = chunk?;
        first_byte.get_or_insert_with(|| exporting.elapsed());
        bytes += chunk.len();
        rows += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    let exported = exporting.elapsed();
    let total = start.elapsed();
    println!(
        "export: {} rows, {:.1} MB in {:.1} s (first byte after {:.0} ms)",
        rows.saturating_sub(1),
        bytes as f64 / 1e6,
        exported.as_secs_f64(),
        first_byte.unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "whole path: {} urls ({done} done, {failed} failed) in {:.1} s: {:.0} urls/s; processing alone {:.0} urls/s",
        args.urls,
        total.as_secs_f64(),
        args.urls as f64 / total.as_secs_f64(),
        args.urls as f64 / processed.as_secs_f64()
    );
    for (name, pid) in &args.pids {
        match memory_mib(*pid) {
            Some((peak, now)) => println!("{name}: peak rss {peak:.0} MiB, now {now:.0} MiB"),
            None => println!("{name}: pid {pid} is gone"),
        }
    }
    Ok(())
}
