//! Content-addressed blobs on local disk.
//!
//! A blob's id is the BLAKE3 hash of its bytes as 64 lowercase hex characters, and it lives at
//! `<root>/<first two hex>/<id>`. Uploads go to a temp file under `<root>/tmp/`, hashed while
//! written, and become visible only by an atomic rename after an fsync, so a reader never sees
//! a partial blob and a crash leaves nothing but temp files, which [`Blobs::open`] removes.

use std::{
    collections::HashSet,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::SystemTime,
};

use pixelmesh_proto::Error;
use tempfile::TempPath;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncWriteExt},
};

/// Largest chunk [`BlobReader::next_chunk`] returns.
pub const CHUNK_BYTES: usize = 64 * 1024;

const TMP_DIR: &str = "tmp";

/// A blob id checked to be 64 lowercase hex characters, so it is safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobId(String);

impl BlobId {
    pub fn parse(id: &str) -> Result<BlobId, Error> {
        if id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(BlobId(id.to_string()))
        } else if id.is_empty() {
            Err(Error::invalid("blob id is empty"))
        } else if id.len() > 64 {
            // Do not echo arbitrarily long input back into errors and logs.
            Err(Error::invalid(format!(
                "blob id must be 64 lowercase hex characters, got {} bytes",
                id.len()
            )))
        } else {
            Err(Error::invalid(format!(
                "blob id {id:?} is not 64 lowercase hex characters"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored blob: its id and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub size: u64,
}

/// The blob store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
    max_blob_bytes: u64,
}

impl Blobs {
    /// Opens (creating if needed) the store at `root` and removes temp files a crash left behind.
    pub async fn open(root: impl Into<PathBuf>, max_blob_bytes: u64) -> Result<Blobs, Error> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| io_error("creating blob directory", &tmp, e))?;
        let mut entries = tokio::fs::read_dir(&tmp)
            .await
            .map_err(|e| io_error("listing temp directory", &tmp, e))?;
        let mut removed = 0u64;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error("listing temp directory", &tmp, e))?
        {
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove stale temp file")
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed temp files of interrupted uploads");
        }
        Ok(Blobs {
            root,
            max_blob_bytes,
        })
    }

    /// Starts an upload refused past `max_bytes` (0: only the store's own limit).
    pub async fn writer(&self, max_bytes: u64) -> Result<BlobWriter, Error> {
        let limit = match max_bytes {
            0 => self.max_blob_bytes,
            n => n.min(self.max_blob_bytes),
        };
        let tmp_dir = self.root.join(TMP_DIR);
        let created = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix("put-")
                .tempfile_in(&tmp_dir)
                .map_err(|e| io_error("creating temp file", &tmp_dir, e))
        })
        .await
        .map_err(|e| Error::internal(format!("temp file task failed: {e}")))??;
        // The TempPath deletes the file when dropped, so every early return and every client
        // that goes away mid-upload cleans up after itself.
        let (file, path) = created.into_parts();
        Ok(BlobWriter {
            file: File::from_std(file),
            path,
            hasher: blake3::Hasher::new(),
            size: 0,
            limit,
            root: self.root.clone(),
        })
    }

    /// Opens a blob for reading.
    pub async fn reader(&self, id: &BlobId) -> Result<BlobReader, Error> {
        let path = self.path(id);
        let file = match File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::not_found(format!("blob {id} not found")));
            }
            Err(e) => return Err(io_error("opening blob", &path, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| io_error("reading blob size", &path, e))?
            .len();
        Ok(BlobReader {
            file,
            size,
            read: 0,
            id: id.clone(),
        })
    }

    /// The size of a stored blob.
    pub async fn stat(&self, id: &BlobId) -> Result<BlobInfo, Error> {
        let path = self.path(id);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(BlobInfo {
                id: id.clone(),
                size: meta.len(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(Error::not_found(format!("blob {id} not found")))
            }
            Err(e) => Err(io_error("reading blob size", &path, e)),
        }
    }

    /// Deletes every blob not in `keep` last written before `cutoff`; returns how many blobs
    /// and bytes went. Blocking: run it off the async runtime.
    pub fn remove_unreferenced(
        &self,
        keep: &HashSet<String>,
        cutoff: SystemTime,
    ) -> Result<(u64, u64), Error> {
        let (mut blobs, mut bytes) = (0, 0);
        let shards = std::fs::read_dir(&self.root)
            .map_err(|e| io_error("listing blob directory", &self.root, e))?;
        for shard in shards.flatten() {
            let name = shard.file_name();
            if name == TMP_DIR || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let entries = std::fs::read_dir(shard.path())
                .map_err(|e| io_error("listing blob directory", &shard.path(), e))?;
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if BlobId::parse(&id).is_err() || keep.contains(&id) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if meta.modified().is_ok_and(|written| written < cutoff) {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => {
                            blobs += 1;
                            bytes += meta.len();
                        }
                        Err(e) => {
                            tracing::warn!(blob = %id, error = %e, "cannot remove orphan blob");
                        }
                    }
                }
            }
        }
        Ok((blobs, bytes))
    }

    /// Deletes those of `ids` not in `keep` and last written before `cutoff`; returns how
    /// many blobs and bytes went. Blocking: run it off the async runtime.
    pub fn remove_if_unreferenced<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        keep: &HashSet<String>,
        cutoff: SystemTime,
    ) -> (u64, u64) {
        let (mut blobs, mut bytes) = (0, 0);
        for id in ids {
            let Ok(blob) = BlobId::parse(id) else {
                continue;
            };
            if keep.contains(id) {
                continue;
            }
            let path = self.path(&blob);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.modified().is_ok_and(|written| written < cutoff) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        blobs += 1;
                        bytes += meta.len();
                    }
                    Err(e) => tracing::warn!(blob = %id, error = %e, "cannot remove blob"),
                }
            }
        }
        (blobs, bytes)
    }

    /// Whether blob `id` is stored. Blocking.
    pub fn exists(&self, id: &str) -> bool {
        BlobId::parse(id).is_ok_and(|id| self.path(&id).is_file())
    }

    /// The first bytes of a stored blob, at most `max`.
    pub async fn head(&self, id: &BlobId, max: usize) -> Result<Vec<u8>, Error> {
        let mut reader = self.reader(id).await?;
        let mut head = Vec::new();
        while head.len() < max {
            match reader.next_chunk().await? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => break,
            }
        }
        head.truncate(max);
        Ok(head)
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        shard_dir(&self.root, id).join(id.as_str())
    }
}

fn shard_dir(root: &Path, id: &BlobId) -> PathBuf {
    root.join(&id.as_str()[..2])
}

/// An upload in progress. Dropping it without [`BlobWriter::finish`] discards the upload.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    path: TempPath,
    hasher: blake3::Hasher,
    size: u64,
    limit: u64,
    root: PathBuf,
}

impl BlobWriter {
    /// Appends a chunk, or refuses the upload once it passes its limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let size = self.size.saturating_add(chunk.len() as u64);
        if size > self.limit {
            // The caller drops the writer on error, which deletes the temp file.
            return Err(Error::too_large(format!(
                "blob exceeds the limit of {} bytes",
                self.limit
            )));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| io_error("writing temp file", &self.path, e))?;
        self.size = size;
        Ok(())
    }

    /// Makes the blob durable under its id and returns it.
    pub async fn finish(mut self) -> Result<BlobInfo, Error> {
        if self.size == 0 {
            return Err(Error::invalid("blob is empty"));
        }
        self.file
            .flush()
            .await
            .map_err(|e| io_error("writing temp file", &self.path, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_error("syncing temp file", &self.path, e))?;
        let id = BlobId(self.hasher.finalize().to_hex().to_string());
        let size = self.size;
        let root = self.root.clone();
        let temp = self.path;
        let blob_id = id.clone();
        // Renames and directory fsyncs are blocking calls without async versions worth having.
        let stored = tokio::task::spawn_blocking(move || persist(&root, &blob_id, temp))
            .await
            .map_err(|e| Error::internal(format!("blob rename task failed: {e}")))??;
        if stored {
            tracing::debug!(blob = %id, size, "blob stored");
        } else {
            tracing::debug!(blob = %id, size, "blob already stored");
        }
        Ok(BlobInfo { id, size })
    }
}

/// Moves a synced temp file to its final name; false if the blob was already there.
fn persist(root: &Path, id: &BlobId, temp: TempPath) -> Result<bool, Error> {
    let shard = shard_dir(root, id);
    match std::fs::create_dir(&shard) {
        // A new shard directory's own entry must reach the disk too.
        Ok(()) => sync_dir(root)?,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("creating blob directory", &shard, e)),
    }
    let target = shard.join(id.as_str());
    if target.exists() {
        // Same id, same bytes: keep the stored copy, and the TempPath deletes ours on drop.
        // Its age restarts, so the orphan sweep cannot take it before the new upload's job
        // refers to it.
        std::fs::File::options()
            .write(true)
            .open(&target)
            .and_then(|file| file.set_modified(SystemTime::now()))
            .map_err(|e| io_error("touching blob", &target, e))?;
        return Ok(false);
    }
    temp.persist(&target)
        .map_err(|e| io_error("renaming blob into place", &target, e.error))?;
    sync_dir(&shard)?;
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing directory", dir, e))
}

/// A stored blob read in chunks.
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    size: u64,
    read: u64,
    id: BlobId,
}

impl BlobReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next chunk of at most [`CHUNK_BYTES`], or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        // `read` may return short counts; `take` + `read_to_end` fills whole chunks.
        (&mut self.file)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::internal(format!("reading blob {}: {e}", self.id)))?;
        if buf.is_empty() {
            if self.read < self.size {
                return Err(Error::internal(format!(
                    "blob {} is shorter on disk than its size",
                    self.id
                )));
            }
            return Ok(None);
        }
        self.read += buf.len() as u64;
        Ok(Some(buf))
    }
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    tracing::error!(path = %path.display(), error = %err, "{what} failed");
    Error::internal(format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use pixelmesh_proto::ErrorCode;

    use super::*;

    async fn store(max_blob_bytes: u64) -> (tempfile::TempDir, Blobs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::open(dir.path().join("blobs"), max_blob_bytes)
            .await
            .expect("open");
        (dir, blobs)
    }

    async fn put(blobs: &Blobs, max_bytes: u64, chunks: &[&[u8]]) -> Result<BlobInfo, Error> {
        let mut writer = blobs.writer(max_bytes).await?;
        for chunk in chunks {
            writer.write(chunk).await?;
        }
        writer.finish().await
    }

    async fn read_all(blobs: &Blobs, id: &BlobId) -> Vec<u8> {
        let mut reader = blobs.reader(id).await.expect("reader");
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.expect("chunk") {
            assert!(chunk.len() <= CHUNK_BYTES);
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out.len() as u64, reader.size());
        out
    }

    fn temp_files(blobs: &Blobs) -> usize {
        std::fs::read_dir(blobs.root.join(TMP_DIR))
            .expect("tmp dir")
            .count()
    }

    #[tokio::test]
    async fn same_bytes_are_stored_once() {
        let (_dir, blobs) = store(1 << 20).await;
        let a = put(&blobs, 0, &[b"hello ", b"world"]).await.expect("put a");
        let b = put(&blobs, 0, &[b"hello world"]).await.expect("put b");
        assert_eq!(a, b);
        assert_eq!(
            a.id.as_str(),
            blake3::hash(b"hello world").to_hex().as_str()
        );
        assert_eq!(a.size, 11);
        assert_eq!(read_all(&blobs, &a.id).await, b"hello world");
        assert_eq!(blobs.stat(&a.id).await.expect("stat").size, 11);
        let shard = blobs.root.join(&a.id.as_str()[..2]);
        assert_eq!(std::fs::read_dir(shard).expect("shard").count(), 1);
        assert_eq!(temp_files(&blobs), 0);
    }

    #[tokio::test]
    async fn large_blobs_come_back_in_chunks() {
        let (_dir, blobs) = store(1 << 20).await;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let info = put(&blobs, 0, &[&data]).await.expect("put");
        let mut reader = blobs.reader(&info.id).await.expect("reader");
        let mut sizes = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.expect("chunk") {
            sizes.push(chunk.len());
        }
        assert_eq!(
            sizes,
            [
                CHUNK_BYTES,
                CHUNK_BYTES,
                CHUNK_BYTES,
                200_000 - 3 * CHUNK_BYTES
            ]
        );
        assert_eq!(read_all(&blobs, &info.id).await, data);
    }

    #[tokio::test]
    async fn too_large_is_refused_and_the_temp_file_removed() {
        let (_dir, blobs) = store(10).await;
        let err = put(&blobs, 0, &[b"123456", b"78901"]).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        assert_eq!(err.message, "blob exceeds the limit of 10 bytes");
        assert_eq!(temp_files(&blobs), 0);

        // The client's own limit applies when it is lower than the store's.
        let err = put(&blobs, 4, &[b"12345"]).await.unwrap_err();
        assert_eq!(err.message, "blob exceeds the limit of 4 bytes");
        // ...and never raises the store's.
        let err = put(&blobs, 100, &[b"12345678901"]).await.unwrap_err();
        assert_eq!(err.message, "blob exceeds the limit of 10 bytes");
        assert_eq!(temp_files(&blobs), 0);

        // Exactly at the limit is fine.
        put(&blobs, 0, &[b"1234567890"])
            .await
            .expect("at the limit");
    }

    #[tokio::test]
    async fn empty_blobs_are_refused() {
        let (_dir, blobs) = store(10).await;
        let err = put(&blobs, 0, &[]).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(temp_files(&blobs), 0);
    }

    #[tokio::test]
    async fn an_abandoned_upload_leaves_nothing() {
        let (_dir, blobs) = store(1 << 20).await;
        let mut writer = blobs.writer(0).await.expect("writer");
        writer.write(b"partial").await.expect("write");
        assert_eq!(temp_files(&blobs), 1);
        drop(writer);
        assert_eq!(temp_files(&blobs), 0);
    }

    #[tokio::test]
    async fn bad_ids_are_refused() {
        for id in [
            "",
            "../../etc/passwd",
            "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde/",
        ] {
            let err = BlobId::parse(id).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{id:?}");
        }
        let (_dir, blobs) = store(10).await;
        let missing = BlobId::parse(&"ab".repeat(32)).expect("valid id");
        assert_eq!(
            blobs.reader(&missing).await.unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            blobs.stat(&missing).await.unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("blobs");
        std::fs::create_dir_all(root.join(TMP_DIR)).expect("mkdir");
        std::fs::write(root.join(TMP_DIR).join("put-crashed"), b"half").expect("write");
        let blobs = Blobs::open(&root, 10).await.expect("open");
        assert_eq!(temp_files(&blobs), 0);
    }
}
