//! What earlier runs of `process` wrote into an output folder, so a run again skips the work
//! already done: `<out>/.pixelmesh/done.jsonl`, one line per output written, appended as each
//! lands (an interrupted run keeps every line before the interruption; a torn last line is
//! ignored).
//!
//! An input is skipped when a line records it with the same content hash and pipeline, and
//! every output that line names is still there with the hash it was written with.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

const DIR: &str = ".pixelmesh";
const FILE: &str = "done.jsonl";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The input's relative path (a ZIP's: its folder).
    pub input: String,
    /// blake3 of the input's bytes.
    pub input_hash: String,
    /// The pipeline, canonical (its JSON form).
    pub pipeline: String,
    /// The outputs written for it (a ZIP: one per entry), relative to the output folder.
    pub outputs: Vec<Written>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub path: String,
    pub hash: String,
}

pub struct Journal {
    out: PathBuf,
    entries: HashMap<String, Entry>,
    file: std::fs::File,
}

impl Journal {
    /// Opens (or starts) the journal of output folder `out`, creating the folder.
    pub fn open(out: &Path) -> anyhow::Result<Journal> {
        let dir = out.join(DIR);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let entries = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Entry>(line).ok())
            .map(|entry| (entry.input.clone(), entry))
            .collect();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // A line torn by an interruption is ended, so the next one starts clean.
        if !text.is_empty() && !text.ends_with('\n') {
            file.write_all(b"\n")?;
        }
        Ok(Journal {
            out: out.to_path_buf(),
            entries,
            file,
        })
    }

    /// Whether `input` with this content and pipeline was done and its outputs are still
    /// as written.
    pub fn is_done(&self, input: &str, input_hash: &str, pipeline: &str) -> bool {
        self.entries.get(input).is_some_and(|entry| {
            entry.input_hash == input_hash
                && entry.pipeline == pipeline
                && !entry.outputs.is_empty()
                && entry.outputs.iter().all(|written| {
                    hash_file(&self.out.join(&written.path)).ok().as_deref()
                        == Some(written.hash.as_str())
                })
        })
    }

    /// Records `entry`, on disk at once.
    pub fn record(&mut self, entry: Entry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .context("writing the output folder's journal")?;
        self.entries.insert(entry.input.clone(), entry);
        Ok(())
    }
}

/// blake3 of a file's bytes, in hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_until_the_input_pipeline_or_output_changes() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("a.webp"), b"output").unwrap();
        let hash = hash_file(&out.path().join("a.webp")).unwrap();
        let mut journal = Journal::open(out.path()).unwrap();
        assert!(!journal.is_done("a.jpg", "in", "p"));
        journal
            .record(Entry {
                input: "a.jpg".into(),
                input_hash: "in".into(),
                pipeline: "p".into(),
                outputs: vec![Written {
                    path: "a.webp".into(),
                    hash,
                }],
            })
            .unwrap();
        assert!(journal.is_done("a.jpg", "in", "p"));

        // Read back by the next run, a torn line after it ignored.
        drop(journal);
        let path = out.path().join(DIR).join(FILE);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"input\":\"b.jp").unwrap();
        let mut journal = Journal::open(out.path()).unwrap();
        assert!(journal.is_done("a.jpg", "in", "p"));
        let after_the_tear = Entry {
            input: "c.jpg".into(),
            input_hash: "in".into(),
            pipeline: "p".into(),
            outputs: journal.entries["a.jpg"].outputs.clone(),
        };
        journal.record(after_the_tear).unwrap();
        drop(journal);
        let journal = Journal::open(out.path()).unwrap();
        assert!(journal.is_done("c.jpg", "in", "p"));
        assert!(journal.is_done("a.jpg", "in", "p"));
        assert!(!journal.is_done("a.jpg", "changed", "p"));
        assert!(!journal.is_done("a.jpg", "in", "other pipeline"));
        std::fs::write(out.path().join("a.webp"), b"edited").unwrap();
        assert!(!journal.is_done("a.jpg", "in", "p"));
        std::fs::remove_file(out.path().join("a.webp")).unwrap();
        assert!(!journal.is_done("a.jpg", "in", "p"));
    }
}
