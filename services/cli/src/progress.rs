//! What a command shows while it works: progress bars on a terminal (`indicatif`: one bar for
//! uploads, one for the batch with images/s and ETA, a line above them per failure), or one
//! JSON object per line on stdout for scripts (`--json`, or when stderr is not a terminal).

use std::{io::IsTerminal as _, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::{Value, json};

pub struct Progress {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    upload: Option<ProgressBar>,
    batch: ProgressBar,
}

impl Progress {
    /// Bars when stderr is a terminal and `json` is false; JSON lines otherwise.
    pub fn new(json: bool) -> Progress {
        let bars =
            (!json && std::io::stderr().is_terminal()).then(|| {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
                let batch = multi.add(ProgressBar::new(0));
                batch.set_style(
                ProgressStyle::with_template(
                    "{spinner} {bar:30.cyan/blue} {pos}/{len} images · {rate} · ETA {eta} {msg}",
                )
                .expect("a valid template")
                .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} images/s", state.per_sec());
                })
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
                batch.enable_steady_tick(Duration::from_millis(200));
                Bars {
                    multi,
                    upload: None,
                    batch,
                }
            });
        Progress { bars }
    }

    fn emit(&self, event: Value) {
        if self.bars.is_none() {
            println!("{event}");
        }
    }

    /// A line of text above the bars; on stderr without them (JSON lines stay on stdout).
    pub fn say(&self, text: &str) {
        match &self.bars {
            Some(bars) => bars.multi.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    pub fn uploading(&mut self, files: usize, bytes: u64) {
        self.emit(json!({"event": "uploading", "files": files, "bytes": bytes}));
        if let Some(bars) = &mut self.bars {
            let bar = bars
                .multi
                .insert_before(&bars.batch, ProgressBar::new(bytes));
            bar.set_style(
                ProgressStyle::with_template(
                    "  uploading {bar:30.green/blue} {bytes}/{total_bytes} · {bytes_per_sec} {msg}",
                )
                .expect("a valid template")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bars.upload = Some(bar);
        }
    }

    /// The upload bar, for the uploads to move as they send.
    pub fn upload_bar(&self) -> Option<ProgressBar> {
        self.bars.as_ref().and_then(|bars| bars.upload.clone())
    }

    pub fn uploaded(&self, name: &str, images: usize) {
        self.emit(json!({"event": "uploaded", "input": name, "images": images}));
    }

    pub fn uploads_done(&self) {
        if let Some(bar) = self.bars.as_ref().and_then(|bars| bars.upload.as_ref()) {
            bar.finish_with_message("done");
        }
    }

    /// `images` more to wait for.
    pub fn expect(&self, images: u64) {
        if let Some(bars) = &self.bars {
            bars.batch.inc_length(images);
        }
    }

    /// `images` already ended before the command looked.
    pub fn ended_before(&self, images: u64) {
        if let Some(bars) = &self.bars {
            bars.batch.inc(images);
        }
    }

    pub fn skipped(&self, input: &str) {
        self.emit(json!({"event": "skipped", "input": input, "reason": "already done"}));
    }

    pub fn submitted(&self, job: &str, images: usize) {
        self.emit(json!({"event": "submitted", "job": job, "images": images}));
    }

    /// An image ended: done (with where its output went, if downloaded), failed or
    /// cancelled.
    pub fn image(&self, job: &str, name: &str, state: &str, output: Option<&str>, error: &str) {
        let mut event = json!({"event": "image", "job": job, "image": name, "state": state});
        if let Some(output) = output {
            event["output"] = json!(output);
        }
        if !error.is_empty() {
            event["error"] = json!(error);
        }
        self.emit(event);
        if let Some(bars) = &self.bars {
            bars.batch.inc(1);
            if state != "done" {
                let why = if error.is_empty() { state } else { error };
                bars.multi.suspend(|| eprintln!("✗ {name}: {why}"));
            }
        }
    }

    /// The counts so far on the batch bar.
    pub fn counts(&self, failed: u64) {
        if let Some(bars) = &self.bars
            && failed > 0
        {
            bars.batch.set_message(format!("· {failed} failed"));
        }
    }

    /// The end: the bars stay as they are, with a summary line below.
    pub fn finish(&self, done: u64, failed: u64, skipped: u64) {
        self.emit(json!({"event": "end", "done": done, "failed": failed, "skipped": skipped}));
        if let Some(bars) = &self.bars {
            bars.batch.finish();
            let mut line = format!("{done} done");
            if failed > 0 {
                line += &format!(", {failed} failed");
            }
            if skipped > 0 {
                line += &format!(", {skipped} skipped (already done)");
            }
            eprintln!("{line} in {:.1} s", bars.batch.elapsed().as_secs_f64());
        }
    }
}
