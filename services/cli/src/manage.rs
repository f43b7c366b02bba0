//! `pixelmesh jobs|watch|download|cancel|retry|pause|resume|delete`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use pixelmesh_proto::v1::{
    CancelJobRequest, DeleteJobRequest, GetJobRequest, ImageState, JobState, JobSummary,
    ListJobsRequest, PauseJobRequest, ResumeJobRequest, RetryJobRequest, WatchJobRequest,
};
use serde_json::json;

use crate::{
    JobId, Outcome,
    client::{Connection, Gateway, refused},
    progress::Progress,
};

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in these states.
    #[arg(long, value_enum)]
    pub state: Vec<StateArg>,
    /// Only the jobs of this batch (a parent id).
    #[arg(long)]
    pub parent: Option<String>,
    /// How many, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// One JSON line per job instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Queued,
    Running,
    Completed,
    CompletedWithErrors,
    Failed,
    Cancelled,
    Paused,
}

impl From<StateArg> for JobState {
    fn from(state: StateArg) -> JobState {
        match state {
            StateArg::Queued => JobState::Queued,
            StateArg::Running => JobState::Running,
            StateArg::Completed => JobState::Completed,
            StateArg::CompletedWithErrors => JobState::CompletedWithErrors,
            StateArg::Failed => JobState::Failed,
            StateArg::Cancelled => JobState::Cancelled,
            StateArg::Paused => JobState::Paused,
        }
    }
}

/// A state as people read it: `completed_with_errors`.
fn state_name(state: JobState) -> String {
    state
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_lowercase()
}

fn summary_json(job: &JobSummary) -> serde_json::Value {
    json!({
        "id": job.id,
        "state": state_name(job.state()),
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "cancelled": job.cancelled,
        "created_at_ms": job.created_at_ms,
        "parent_id": job.parent_id,
    })
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<Outcome> {
    let mut client = args.connection.connect().await?;
    let list = client
        .list_jobs(ListJobsRequest {
            limit: args.limit,
            before: String::new(),
            parent_id: args.parent.unwrap_or_default(),
            states: args
                .state
                .iter()
                .map(|s| JobState::from(*s) as i32)
                .collect(),
        })
        .await
        .map_err(|status| refused("listing jobs", status))?
        .into_inner();
    if args.json {
        for job in &list.jobs {
            println!("{}", summary_json(job));
        }
    } else if list.jobs.is_empty() {
        println!("no jobs");
    } else {
        println!(
            "{:<26}  {:<21}  {:>7}  {:>7}  {:>6}",
            "ID", "STATE", "DONE", "TOTAL", "FAILED"
        );
        for job in &list.jobs {
            println!(
                "{:<26}  {:<21}  {:>7}  {:>7}  {:>6}",
                job.id,
                state_name(job.state()),
                job.done,
                job.total,
                job.failed
            );
        }
    }
    Ok(Outcome::Done)
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job's id.
    pub id: String,
    /// One JSON line per event instead of a progress bar.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// Follows a job to its end: exit 0 when every image is done, 1 otherwise.
pub async fn watch(args: WatchArgs) -> anyhow::Result<Outcome> {
    let mut client = args.connection.connect().await?;
    let progress = Progress::new(args.json);
    let mut stream = client
        .watch_job(WatchJobRequest {
            id: args.id.clone(),
            after_version: 0,
        })
        .await
        .map_err(|status| refused("watching the job", status))?
        .into_inner();
    let mut last = JobSummary::default();
    let mut first = true;
    while let Some(event) = stream.next().await {
        let event = event.map_err(|status| refused("watching the job", status))?;
        let summary = event.summary.unwrap_or_default();
        if first {
            // The job's state as it is: what already ended counts at once.
            progress.expect(u64::from(summary.total));
            progress.ended_before(u64::from(summary.done + summary.failed + summary.cancelled));
            first = false;
        }
        if let Some(image) = event.image {
            let state = match image.state() {
                ImageState::Done => "done",
                ImageState::Failed => "failed",
                ImageState::Cancelled => "cancelled",
                _ => continue,
            };
            progress.image(&summary.id, &image.name, state, None, &image.error);
        }
        progress.counts(u64::from(summary.failed));
        let end = summary.state().is_final();
        last = summary;
        if end {
            break;
        }
    }
    progress.finish(
        u64::from(last.done),
        u64::from(last.failed + last.cancelled),
        0,
    );
    Ok(if last.state() == JobState::Completed {
        Outcome::Done
    } else {
        Outcome::SomeFailed
    })
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The job's id.
    pub id: String,
    /// The folder to write into (made if missing); default: a folder named after the job.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub connection: Connection,
}

/// Every done image's output, named after its input (the extension of its format); exit 1
/// when some images have none.
pub async fn download(args: DownloadArgs) -> anyhow::Result<Outcome> {
    let mut client = args.connection.connect().await?;
    let job = client
        .get_job(GetJobRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|status| refused("reading the job", status))?
        .into_inner();
    let out = args.out.unwrap_or_else(|| PathBuf::from(&args.id));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut missing = 0;
    for image in &job.images {
        if image.state() != ImageState::Done {
            missing += 1;
            continue;
        }
        // Names are the client's: only their last part, so nothing lands outside `out`.
        let name = crate::inputs::contained(&image.name, image.index);
        let written =
            crate::process::download(&mut client, &args.id, image.index, &out, &name).await?;
        println!("{}", out.join(&written.path).display());
    }
    if missing > 0 {
        eprintln!("{missing} images have no output (not done)");
        return Ok(Outcome::SomeFailed);
    }
    Ok(Outcome::Done)
}

#[derive(Debug, Clone, Copy)]
pub enum Control {
    Cancel,
    Retry,
    Pause,
    Resume,
    Delete,
}

pub async fn control(what: Control, job: JobId) -> anyhow::Result<Outcome> {
    let mut client: Gateway = job.connection.connect().await?;
    let id = job.id.clone();
    let answer = match what {
        Control::Cancel => client.cancel_job(CancelJobRequest { id }).await,
        Control::Retry => client.retry_job(RetryJobRequest { id }).await,
        Control::Pause => client.pause_job(PauseJobRequest { id }).await,
        Control::Resume => client.resume_job(ResumeJobRequest { id }).await,
        Control::Delete => {
            client
                .delete_job(DeleteJobRequest { id })
                .await
                .map_err(|status| refused("deleting the job", status))?;
            if job.json {
                println!("{}", json!({"id": job.id, "deleted": true}));
            } else {
                println!("deleted {}", job.id);
            }
            return Ok(Outcome::Done);
        }
    };
    let summary = answer
        .map_err(|status| refused(&format!("{what:?} the job").to_lowercase(), status))?
        .into_inner()
        .summary
        .unwrap_or_default();
    if job.json {
        println!("{}", summary_json(&summary));
    } else {
        println!("{} {}", summary.id, state_name(summary.state()));
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_in_the_api() {
        assert_eq!(
            state_name(JobState::CompletedWithErrors),
            "completed_with_errors"
        );
    }
}
