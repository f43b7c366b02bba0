//! `pixelmesh process`: upload, submit, follow the live event stream, download each output
//! as it finishes, and remember it in the output folder's journal so a run again resumes.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::{StreamExt as _, stream::FuturesUnordered};
use pixelmesh_pipeline::ops::Pipeline;
use pixelmesh_proto::v1::{
    DownloadOutputRequest, GetJobRequest, ImageInput, ImageState, JobEvent, SubmitJobRequest,
    UploadArchiveRequest, UploadImageRequest, WatchJobRequest,
};
use tokio::{io::AsyncReadExt as _, sync::mpsc};

use crate::{
    Outcome,
    client::{Connection, Gateway, refused},
    inputs::{self, Input},
    journal::{self, Entry, Journal, Written},
    progress::Progress,
};

/// Bytes per upload message.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Image files, folders of images (walked recursively) or ZIPs of images.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The pipeline, in the text form (`resize:w=800/format:webp,q=80`) or as JSON.
    #[arg(long, short)]
    pub pipeline: String,
    /// The folder the outputs go in, mirroring the inputs' tree; made if missing.
    #[arg(long, short)]
    pub out: PathBuf,
    /// One JSON line per event on stdout instead of progress bars.
    #[arg(long)]
    pub json: bool,
    /// On Ctrl-C, leave the jobs running on the server instead of cancelling them.
    #[arg(long)]
    pub detach: bool,
    /// Uploads and downloads in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Images per job: at most the gateway's --max-files-per-job.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub images_per_job: u32,
    #[command(flatten)]
    pub connection: Connection,
}

pub async fn run(args: ProcessArgs) -> anyhow::Result<Outcome> {
    let pipeline = Pipeline::parse(&args.pipeline)
        .map_err(|err| anyhow::anyhow!("--pipeline: {}", err.message))?;
    let inputs = inputs::collect(&args.inputs, &args.out)?;
    let journal = Journal::open(&args.out)?;
    let mut client = args.connection.connect().await?;
    let progress = Progress::new(args.json);
    let submitted = Arc::new(Mutex::new(Vec::<String>::new()));
    let work = Work {
        out: args.out.clone(),
        pipeline_key: pipeline.to_json(),
        pipeline,
        parallel: usize::from(args.parallel),
        images_per_job: args.images_per_job as usize,
        submitted: submitted.clone(),
    };
    let mut worker = client.clone();
    tokio::select! {
        outcome = work.run(&mut worker, inputs, journal, progress) => outcome,
        _ = tokio::signal::ctrl_c() => {
            let jobs = submitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for job in jobs {
                if args.detach {
                    eprintln!("detached: job {job} keeps running (pixelmesh watch {job})");
                } else {
                    match client.cancel_job(pixelmesh_proto::v1::CancelJobRequest { id: job.clone() }).await {
                        Ok(_) => eprintln!("cancelled job {job}"),
                        Err(status) => eprintln!("cancelling job {job}: {}", status.message()),
                    }
                }
            }
            Ok(Outcome::Interrupted)
        }
    }
}

struct Work {
    out: PathBuf,
    pipeline: Pipeline,
    pipeline_key: String,
    parallel: usize,
    images_per_job: usize,
    /// The ids of the jobs made so far, for Ctrl-C.
    submitted: Arc<Mutex<Vec<String>>>,
}

/// An input to upload: what it is and its content hash, for the journal.
struct Pending {
    input: Input,
    hash: String,
}

/// Where one image of a job belongs: the journal entry of its input, and its output path
/// before the format's extension.
#[derive(Clone)]
struct Target {
    key: String,
    relative: String,
}

/// An input's images, counted down as their outputs land; recorded in the journal when all
/// are done.
struct Tally {
    hash: String,
    left: usize,
    failed: bool,
    written: Vec<Written>,
}

impl Work {
    async fn run(
        &self,
        client: &mut Gateway,
        inputs: Vec<Input>,
        mut journal: Journal,
        mut progress: Progress,
    ) -> anyhow::Result<Outcome> {
        let mut skipped = 0u64;
        let mut pending = Vec::new();
        for input in inputs {
            let hash = journal::hash_file(&input.path)
                .with_context(|| format!("reading {}", input.path.display()))?;
            if journal.is_done(&input.relative, &hash, &self.pipeline_key) {
                progress.skipped(&input.relative);
                skipped += 1;
            } else {
                pending.push(Pending { input, hash });
            }
        }
        if skipped > 0 {
            progress.say(&format!(
                "skipping {skipped} inputs already done in {}",
                self.out.display()
            ));
        }
        if pending.is_empty() {
            progress.finish(0, 0, skipped);
            return Ok(Outcome::Done);
        }

        // Uploads, several at once; an unreadable or refused input stops the run before
        // anything is submitted.
        let bytes = pending
            .iter()
            .map(|p| std::fs::metadata(&p.input.path).map_or(0, |m| m.len()))
            .sum();
        progress.uploading(pending.len(), bytes);
        let progress = Arc::new(progress);
        let mut uploads: Vec<(usize, anyhow::Result<Vec<ImageInput>>)> =
            futures::stream::iter(pending.iter().enumerate())
                .map(|(i, p)| {
                    let mut client = client.clone();
                    let progress = progress.clone();
                    async move {
                        let images = upload(&mut client, &p.input, &progress).await;
                        if let Ok(images) = &images {
                            progress.uploaded(&p.input.relative, images.len());
                        }
                        (i, images)
                    }
                })
                .buffer_unordered(self.parallel)
                .collect()
                .await;
        progress.uploads_done();
        uploads.sort_by_key(|(i, _)| *i);

        // An input the gateway refused (too large, not an image it takes) fails alone.
        let mut failed = 0u64;
        let uploads: Vec<(usize, Vec<ImageInput>)> = uploads
            .into_iter()
            .filter_map(|(i, result)| match result {
                Ok(images) => Some((i, images)),
                Err(err) => {
                    failed += 1;
                    progress.image(
                        "",
                        &pending[i].input.relative,
                        "failed",
                        None,
                        &format!("{err:#}"),
                    );
                    None
                }
            })
            .collect();
        progress.counts(failed);

        let mut tallies: HashMap<String, Tally> = HashMap::new();
        let mut images = Vec::new();
        for (i, inputs) in uploads {
            let p = &pending[i];
            tallies.insert(
                p.input.relative.clone(),
                Tally {
                    hash: p.hash.clone(),
                    left: inputs.len(),
                    failed: false,
                    written: Vec::new(),
                },
            );
            for mut image in inputs {
                let relative = if p.input.archive {
                    // The gateway's entry names, kept inside the output folder.
                    let entry = inputs::contained(&image.name, images.len() as u32);
                    format!("{}/{entry}", p.input.relative)
                } else {
                    p.input.relative.clone()
                };
                image.name = relative.clone();
                images.push((
                    image,
                    Target {
                        key: p.input.relative.clone(),
                        relative,
                    },
                ));
            }
        }

        // One job per --images-per-job images, each followed on its own event stream.
        let (events, mut incoming) = mpsc::channel::<(usize, anyhow::Result<JobEvent>)>(256);
        let mut jobs: Vec<(String, Vec<Target>)> = Vec::new();
        for chunk in images.chunks(self.images_per_job) {
            let request = SubmitJobRequest {
                pipeline: self.pipeline.to_proto(),
                inputs: chunk.iter().map(|(image, _)| image.clone()).collect(),
                ..Default::default()
            };
            let job = client
                .submit_job(request)
                .await
                .map_err(|status| refused("submitting the job", status))?
                .into_inner();
            let summary = job.summary.clone().unwrap_or_default();
            self.submitted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(summary.id.clone());
            progress.submitted(&summary.id, chunk.len());
            progress.expect(chunk.len() as u64);
            let number = jobs.len();
            jobs.push((
                summary.id.clone(),
                chunk.iter().map(|(_, t)| t.clone()).collect(),
            ));
            tokio::spawn(follow(
                client.clone(),
                summary.id,
                summary.version,
                number,
                events.clone(),
            ));
        }
        drop(events);

        let mut ended: Vec<HashSet<u32>> = vec![HashSet::new(); jobs.len()];
        let mut finished_jobs = 0;
        let mut downloads = FuturesUnordered::new();
        let mut waiting = std::collections::VecDeque::<(usize, u32, Target)>::new();
        let mut done = 0u64;
        let end_image = |tallies: &mut HashMap<String, Tally>,
                         journal: &mut Journal,
                         target: &Target,
                         written: Option<Written>|
         -> anyhow::Result<()> {
            let tally = tallies.get_mut(&target.key).expect("a tally per input");
            tally.left -= 1;
            match written {
                Some(written) => tally.written.push(written),
                None => tally.failed = true,
            }
            if tally.left == 0 && !tally.failed {
                journal.record(Entry {
                    input: target.key.clone(),
                    input_hash: tally.hash.clone(),
                    pipeline: self.pipeline_key.clone(),
                    outputs: std::mem::take(&mut tally.written),
                })?;
            }
            Ok(())
        };
        loop {
            while downloads.len() < self.parallel
                && let Some((job, index, target)) = waiting.pop_front()
            {
                let mut client = client.clone();
                let id: String = jobs[job].0.clone();
                let out = self.out.clone();
                downloads.push(async move {
                    let result = download(&mut client, &id, index, &out, &target.relative).await;
                    (job, target, result)
                });
            }
            tokio::select! {
                Some(finished) = downloads.next(), if !downloads.is_empty() => {
                    let (job, target, result): (usize, Target, anyhow::Result<Written>) = finished;
                    match result {
                        Ok(written) => {
                            done += 1;
                            progress.image(&jobs[job].0, &target.relative, "done", Some(&written.path), "");
                            end_image(&mut tallies, &mut journal, &target, Some(written))?;
                        }
                        Err(err) => {
                            failed += 1;
                            progress.image(&jobs[job].0, &target.relative, "failed", None, &format!("downloading: {err:#}"));
                            end_image(&mut tallies, &mut journal, &target, None)?;
                        }
                    }
                    progress.counts(failed);
                }
                next = incoming.recv(), if finished_jobs < jobs.len() => {
                    let Some((job, event)) = next else {
                        finished_jobs = jobs.len();
                        continue;
                    };
                    let event = match event {
                        Ok(event) => event,
                        Err(err) => bail!("following job {}: {err:#}", jobs[job].0),
                    };
                    // A final summary: the stream ends; what its events missed is read
                    // from the job itself.
                    let final_state = event.summary.as_ref().is_some_and(|s| s.state().is_final());
                    let mut images = Vec::new();
                    if let Some(image) = event.image {
                        images.push(image);
                    }
                    if final_state {
                        let whole = client
                            .get_job(GetJobRequest { id: jobs[job].0.clone() })
                            .await
                            .map_err(|status| refused("reading the job", status))?
                            .into_inner();
                        images.extend(whole.images);
                        finished_jobs += 1;
                    }
                    for image in images {
                        let state = image.state();
                        if matches!(state, ImageState::Pending | ImageState::Unspecified)
                            || !ended[job].insert(image.index)
                        {
                            continue;
                        }
                        let Some(target) = jobs[job].1.get(image.index as usize).cloned() else {
                            continue;
                        };
                        if state == ImageState::Done {
                            waiting.push_back((job, image.index, target));
                        } else {
                            failed += 1;
                            let name = if state == ImageState::Cancelled { "cancelled" } else { "failed" };
                            progress.image(&jobs[job].0, &target.relative, name, None, &image.error);
                            end_image(&mut tallies, &mut journal, &target, None)?;
                            progress.counts(failed);
                        }
                    }
                }
                else => break,
            }
        }
        progress.finish(done, failed, skipped);
        Ok(if failed > 0 {
            Outcome::SomeFailed
        } else {
            Outcome::Done
        })
    }
}

/// Relays job `id`'s events from `after` on to `events`, resuming after the last one seen
/// when the stream breaks (a gateway restart), until a final state.
async fn follow(
    mut client: Gateway,
    id: String,
    mut after: u64,
    job: usize,
    events: mpsc::Sender<(usize, anyhow::Result<JobEvent>)>,
) {
    let mut failures = 0;
    loop {
        let request = WatchJobRequest {
            id: id.clone(),
            after_version: after,
        };
        let mut stream = match client.watch_job(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                failures += 1;
                if failures > 5 {
                    let _ = events.send((job, Err(refused("watching", status)))).await;
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500 * failures)).await;
                continue;
            }
        };
        while let Some(next) = stream.next().await {
            let Ok(event) = next else { break };
            failures = 0;
            let summary = event.summary.clone().unwrap_or_default();
            after = after.max(summary.version);
            let last = summary.state().is_final();
            if events.send((job, Ok(event))).await.is_err() || last {
                return;
            }
        }
        failures += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500 * failures)).await;
    }
}

/// Uploads one input: an image as one blob, a ZIP as the gateway unpacks it.
async fn upload(
    client: &mut Gateway,
    input: &Input,
    progress: &Progress,
) -> anyhow::Result<Vec<ImageInput>> {
    let mut file = tokio::fs::File::open(&input.path)
        .await
        .with_context(|| format!("opening {}", input.path.display()))?;
    // Read as the call sends; a read error is kept, the upload cut short, then failed below.
    let failure = Arc::new(Mutex::new(None::<std::io::Error>));
    let bar = progress.upload_bar();
    let chunks = {
        let failure = failure.clone();
        async_stream::stream! {
            loop {
                let mut chunk = vec![0; CHUNK];
                match file.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        if let Some(bar) = &bar {
                            bar.inc(n as u64);
                        }
                        yield chunk;
                    }
                    Err(err) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                        break;
                    }
                }
            }
        }
    };
    let name = input.relative.clone();
    let result = if input.archive {
        client
            .upload_archive(chunks.map(|chunk| UploadArchiveRequest { chunk }))
            .await
            .map(|answer| answer.into_inner().inputs)
    } else {
        let mut first = Some(name.clone());
        let requests = chunks.map(move |chunk| UploadImageRequest {
            name: first.take().unwrap_or_default(),
            chunk,
        });
        client.upload_image(requests).await.map(|answer| {
            vec![ImageInput {
                blob_id: answer.into_inner().blob_id,
                name,
                url: String::new(),
            }]
        })
    };
    if let Some(err) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(err).with_context(|| format!("reading {}", input.path.display()));
    }
    result.map_err(|status| refused(&format!("uploading {}", input.path.display()), status))
}

/// Downloads image `index`'s output into `out`, written aside and renamed into place, and
/// says where it went and its hash.
pub(crate) async fn download(
    client: &mut Gateway,
    job: &str,
    index: u32,
    out: &Path,
    relative: &str,
) -> anyhow::Result<Written> {
    let mut stream = client
        .download_output(DownloadOutputRequest {
            job_id: job.to_string(),
            index,
            name: String::new(),
        })
        .await
        .map_err(|status| refused("downloading", status))?
        .into_inner();
    let mut path = None;
    let mut file = None;
    let mut hasher = blake3::Hasher::new();
    let mut partial = PathBuf::new();
    while let Some(message) = stream.next().await {
        let message = message.map_err(|status| refused("downloading", status))?;
        if let Some(output) = message.output {
            let relative = inputs::output_path(relative, &output.content_type);
            let target = out.join(&relative);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            partial = target.with_extension(format!(
                "{}.part",
                target.extension().and_then(|e| e.to_str()).unwrap_or("")
            ));
            file = Some(
                tokio::fs::File::create(&partial)
                    .await
                    .with_context(|| format!("creating {}", partial.display()))?,
            );
            path = Some((relative, target));
        }
        let Some(file) = file.as_mut() else {
            bail!("the download began without its output");
        };
        hasher.update(&message.chunk);
        tokio::io::AsyncWriteExt::write_all(file, &message.chunk)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
    }
    let (Some((relative, target)), Some(mut file)) = (path, file) else {
        bail!("the download was empty");
    };
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, &target)
        .await
        .with_context(|| format!("renaming into {}", target.display()))?;
    Ok(Written {
        path: relative,
        hash: hasher.finalize().to_hex().to_string(),
    })
}
