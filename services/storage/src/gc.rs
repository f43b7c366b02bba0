//! The orphan sweep: deletes blobs no job refers to, such as uploads whose submit was refused
//! or never came. A blob is kept for a grace period after it was last written, so an upload
//! waiting for its submit and a worker's output waiting to be recorded are never taken.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use pixelmesh_blobs::{BlobId, BlobStore};
use pixelmesh_proto::Error;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the sweep runs; at most, since a short grace period sweeps more often.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// What one sweep removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub blobs: u64,
    pub bytes: u64,
}

/// One sweep: removes blobs no job refers to that were last written more than `grace` ago,
/// then the owner and header records of blobs that are gone.
pub async fn sweep(blobs: &BlobStore, store: &Store, grace: Duration) -> Result<Swept, Error> {
    // The cutoff comes first: whatever is written or touched after it is left alone even if
    // the reference snapshot below cannot know about it yet.
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let keep = store.read(|meta| meta.referenced_blobs()).await?;
    let recorded = store.read(|meta| meta.recorded_blobs()).await?;
    let listed = blobs.list().await?;
    let mut swept = Swept { blobs: 0, bytes: 0 };
    let mut present = HashSet::with_capacity(listed.len());
    for blob in listed {
        if keep.contains(blob.id.as_str()) || blob.modified >= cutoff {
            present.insert(blob.id.as_str().to_string());
            continue;
        }
        match blobs.delete(&blob.id).await {
            Ok(_) => {
                swept.blobs += 1;
                swept.bytes += blob.size;
            }
            Err(err) => {
                tracing::warn!(blob = %blob.id, error = %err.message, "cannot remove orphan blob");
                present.insert(blob.id.as_str().to_string());
            }
        }
    }
    let gone: Vec<String> = recorded
        .into_iter()
        .filter(|id| !present.contains(id))
        .collect();
    if !gone.is_empty() {
        store.write(move |meta| meta.forget_blobs(&gone)).await?;
    }
    Ok(swept)
}

/// Deletes those of `ids` not in `keep` and last written before `cutoff`; returns how many
/// blobs and bytes went.
pub async fn remove_if_unreferenced(
    blobs: &BlobStore,
    ids: impl IntoIterator<Item = String>,
    keep: &HashSet<String>,
    cutoff: SystemTime,
) -> (u64, u64) {
    let (mut count, mut bytes) = (0, 0);
    let mut seen = HashSet::new();
    for id in ids {
        let Ok(blob) = BlobId::parse(&id) else {
            continue;
        };
        if keep.contains(&id) || !seen.insert(id) {
            continue;
        }
        let entry = match blobs.entry(&blob).await {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(blob = %blob, error = %err.message, "cannot read blob");
                continue;
            }
        };
        if entry.modified >= cutoff {
            continue;
        }
        match blobs.delete(&blob).await {
            Ok(true) => {
                count += 1;
                bytes += entry.size;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(blob = %blob, error = %err.message, "cannot remove blob"),
        }
    }
    (count, bytes)
}

/// Sweeps at start and then periodically until `stop`.
pub async fn run(blobs: BlobStore, store: Store, grace: Duration, stop: CancellationToken) {
    let every = (grace / 4).clamp(Duration::from_secs(1), MAX_INTERVAL);
    loop {
        match sweep(&blobs, &store, grace).await {
            Ok(swept) if swept.blobs > 0 => {
                tracing::info!(
                    blobs = swept.blobs,
                    bytes = swept.bytes,
                    "removed orphan blobs"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err.message, "orphan blob sweep failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, path::Path};

    use pixelmesh_proto::v1::{ImageInput, Output, TaskResult, task_result::Outcome};

    use super::*;
    use crate::meta::Meta;

    async fn put(blobs: &BlobStore, bytes: &[u8]) -> String {
        blobs
            .put(bytes::Bytes::copy_from_slice(bytes))
            .await
            .expect("put")
            .id
            .as_str()
            .to_string()
    }

    fn path(root: &Path, id: &str) -> std::path::PathBuf {
        root.join(&id[..2]).join(id)
    }

    fn age(root: &Path, id: &str, by: Duration) {
        File::options()
            .write(true)
            .open(path(root, id))
            .and_then(|f| f.set_modified(SystemTime::now() - by))
            .expect("set mtime");
    }

    #[tokio::test]
    async fn removes_old_unreferenced_blobs_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("blobs");
        let url = pixelmesh_blobs::file_url(&root).expect("url");
        let blobs = BlobStore::open(&url, 1 << 20).await.expect("blobs");
        let meta = Meta::open(&dir.path().join("meta"), 100).expect("meta");
        let store = Store::start(meta.clone()).expect("store");
        let input = put(&blobs, b"input").await;
        let output = put(&blobs, b"output").await;
        let orphan = put(&blobs, b"orphan").await;
        let fresh_orphan = put(&blobs, b"fresh orphan").await;
        let reuploaded = put(&blobs, b"uploaded twice").await;
        let logo = put(&blobs, b"logo").await;

        let job = ulid::Ulid::new().to_string();
        let watermark = pixelmesh_proto::v1::Operation {
            op: Some(pixelmesh_proto::v1::operation::Op::Watermark(
                pixelmesh_proto::v1::Watermark {
                    logo: logo.clone(),
                    ..Default::default()
                },
            )),
        };
        meta.create(pixelmesh_proto::v1::CreateJobRequest {
            id: job.clone(),
            pipeline: vec![watermark],
            inputs: vec![ImageInput {
                blob_id: input.clone(),
                name: "a.png".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("create");
        meta.record(&TaskResult {
            job_id: job.clone(),
            index: 0,
            outcome: Some(Outcome::Output(Output {
                blob_id: output.clone(),
                content_type: "image/png".into(),
                width: 1,
                height: 1,
                size_bytes: 6,
                analysis: Vec::new(),
            })),
            worker_id: "w".into(),
            attempts: 1,
            duration_ms: 1,
        })
        .expect("record");

        let day = Duration::from_secs(86_400);
        for id in [&input, &output, &orphan, &reuploaded, &logo] {
            age(&root, id, 2 * day);
        }
        // Uploading the same bytes again restarts the blob's age.
        assert_eq!(put(&blobs, b"uploaded twice").await, reuploaded);

        let owned = pixelmesh_proto::v1::BlobInfo {
            id: orphan.clone(),
            ..Default::default()
        };
        meta.add_blob(&owned, "alice").expect("owner");
        let swept = sweep(&blobs, &store, day).await.expect("sweep");
        assert_eq!(swept, Swept { blobs: 1, bytes: 6 });
        assert!(!path(&root, &orphan).exists(), "the old orphan is gone");
        assert!(
            !meta.owns(&orphan, "alice").expect("owns"),
            "its owner record went with it"
        );
        for kept in [&input, &output, &fresh_orphan, &reuploaded, &logo] {
            assert!(path(&root, kept).exists(), "{kept} was kept");
        }
        assert_eq!(
            sweep(&blobs, &store, day).await.expect("again"),
            Swept { blobs: 0, bytes: 0 }
        );
    }
}
