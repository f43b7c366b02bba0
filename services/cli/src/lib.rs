//! `pixelmesh process|jobs|watch|download|cancel|retry|pause|resume|delete`: a gRPC client of
//! the gateway, in the same binary as the roles.
//!
//! Exit codes: 0 when everything asked for is done; 1 when some images failed (or were
//! cancelled); 2 for a usage or connection error, or a call the gateway refused; 130 when
//! Ctrl-C stopped it.

mod client;
mod inputs;
mod journal;
mod manage;
mod process;
mod progress;

use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use client::Connection;

/// The client's commands, flattened into `pixelmesh`'s own.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Uploads files, folders or ZIPs, runs a pipeline on them and downloads each output as
    /// it finishes into --out, mirroring the input tree. Run it again to resume: outputs
    /// already there and unchanged are skipped.
    Process(process::ProcessArgs),
    /// Lists jobs, newest first.
    Jobs(manage::JobsArgs),
    /// Follows a job to its end with a progress bar.
    Watch(manage::WatchArgs),
    /// Downloads a job's outputs, one file per image.
    Download(manage::DownloadArgs),
    /// Cancels a job: pending images are not processed.
    Cancel(JobId),
    /// Runs an ended job's failed images again.
    Retry(JobId),
    /// Stops dispatching a job's images (running ones finish).
    Pause(JobId),
    /// Dispatches a paused job's images again.
    Resume(JobId),
    /// Deletes a job and its outputs (cancelling it first if it runs).
    Delete(JobId),
}

#[derive(Debug, Args)]
pub struct JobId {
    /// The job's id.
    pub id: String,
    #[command(flatten)]
    pub connection: Connection,
    /// One JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How a command ended, as its exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    SomeFailed,
    Interrupted,
}

/// Runs a client command; errors are printed and become exit code 2.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Process(args) => process::run(args).await,
        Command::Jobs(args) => manage::jobs(args).await,
        Command::Watch(args) => manage::watch(args).await,
        Command::Download(args) => manage::download(args).await,
        Command::Cancel(job) => manage::control(manage::Control::Cancel, job).await,
        Command::Retry(job) => manage::control(manage::Control::Retry, job).await,
        Command::Pause(job) => manage::control(manage::Control::Pause, job).await,
        Command::Resume(job) => manage::control(manage::Control::Resume, job).await,
        Command::Delete(job) => manage::control(manage::Control::Delete, job).await,
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(err) => {
            eprintln!("pixelmesh: {err:#}");
            ExitCode::from(2)
        }
    }
}
