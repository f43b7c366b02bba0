//! The ceiling of storage's one sled database: how many image-state updates (recorded
//! results) and job creations per second it takes, through the same [`Store`] the gRPC
//! service uses (one writer thread, group commit, one flush per group, durable on answer).
//!
//! `cargo run --release -p pixelmesh-storage --example meta-ceiling -- [--jobs N] [--images N]
//! [--clients N]`: `--clients` tasks each create jobs of `--images` images, then record every
//! image's result one call at a time, as schedulers do. Prints jobs/s and updates/s.

use std::{sync::Arc, time::Instant};

use pixelmesh_proto::v1::{CreateJobRequest, ImageInput, Output, TaskResult, task_result::Outcome};
use pixelmesh_storage::{meta::Meta, store::Store};

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs = flag("--jobs", 200);
    let images = flag("--images", 100);
    let clients = flag("--clients", 16).max(1);
    let dir = tempfile::tempdir()?;
    let meta = Meta::open(&dir.path().join("meta"), 10_000)?;
    let store = Arc::new(Store::start(meta)?);
    let blob = "ab".repeat(32);
    let ids: Vec<String> = (0..jobs).map(|_| ulid::Ulid::new().to_string()).collect();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(jobs.div_ceil(clients)) {
        let (store, chunk, blob) = (store.clone(), chunk.to_vec(), blob.clone());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let request = CreateJobRequest {
                    id,
                    inputs: (0..images)
                        .map(|i| ImageInput {
                            blob_id: blob.clone(),
                            name: format!("{i}.jpg"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                store.write(move |meta| meta.create(request)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks.drain(..) {
        task.await??;
    }
    let created = started.elapsed();

    let started = Instant::now();
    let all: Vec<(String, u32)> = ids
        .iter()
        .flat_map(|id| (0..images as u32).map(move |i| (id.clone(), i)))
        .collect();
    for chunk in all.chunks(all.len().div_ceil(clients)) {
        let (store, chunk, blob) = (store.clone(), chunk.to_vec(), blob.clone());
        tasks.push(tokio::spawn(async move {
            for (job_id, index) in chunk {
                let result = TaskResult {
                    job_id,
                    index,
                    outcome: Some(Outcome::Output(Output {
                        blob_id: blob.clone(),
                        content_type: "image/jpeg".into(),
                        width: 1920,
                        height: 1080,
                        size_bytes: 500_000,
                        analysis: Vec::new(),
                    })),
                    worker_id: "w".into(),
                    attempts: 1,
                    duration_ms: 60,
                };
                store.write(move |meta| meta.record(&result)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let recorded = started.elapsed();
    let updates = all.len();
    println!(
        "jobs created: {jobs} of {images} images in {:.2} s = {:.0} jobs/s ({:.0} images/s)",
        created.as_secs_f64(),
        jobs as f64 / created.as_secs_f64(),
        (jobs * images) as f64 / created.as_secs_f64()
    );
    println!(
        "image results recorded: {updates} by {clients} clients in {:.2} s = {:.0} updates/s",
        recorded.as_secs_f64(),
        updates as f64 / recorded.as_secs_f64()
    );
    Ok(())
}
