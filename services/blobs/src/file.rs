//! Blobs in a directory: `<root>/<first two hex>/<id>`.
//!
//! Uploads go to a temp file under `<root>/tmp/`, hashed while written, and become visible
//! only by an atomic rename after an fsync (of the file, then of its directory), so a reader
//! never sees a partial blob and a crash leaves nothing but temp files. The fsyncs stay: here
//! the directory is the only copy. They run on a blocking thread while the filter's cores
//! compute other images, so they cost latency, not throughput.
//!
//! Several roles may share the directory (`pixelmesh all`, or one host's volume mounted into
//! every container), so a temp file is removed at open only once it has been left alone for
//! [`STALE_TEMP`]: another process may be writing it right now.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use pixelmesh_proto::Error;
use tempfile::TempPath;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncWriteExt},
};

use crate::{BlobId, Listed, Stored, limit_error, over_limit};

/// Largest chunk a [`BlobReader`] returns.
pub const CHUNK_BYTES: usize = 64 * 1024;

const TMP_DIR: &str = "tmp";

/// A temp file untouched this long belongs to an upload that died.
pub const STALE_TEMP: Duration = Duration::from_secs(600);

/// The blob store rooted at one directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Opens (creating if needed) the store at `root` and removes temp files a crash left
    /// behind.
    pub async fn open(root: PathBuf) -> Result<FileStore, Error> {
        let tmp = root.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| io_error("creating blob directory", &tmp, e))?;
        let removed = tokio::task::spawn_blocking(move || remove_stale_temp(&tmp))
            .await
            .map_err(|e| Error::internal(format!("temp file sweep failed: {e}")))?;
        if removed > 0 {
            tracing::info!(removed, "removed temp files of interrupted uploads");
        }
        Ok(FileStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts an upload refused past `limit` bytes.
    pub async fn writer(&self, limit: u64) -> Result<BlobWriter, Error> {
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

    /// Stores bytes already in memory: one blocking call for the whole write.
    pub async fn put(&self, id: BlobId, bytes: Bytes) -> Result<Stored, Error> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let tmp_dir = root.join(TMP_DIR);
            let mut temp = tempfile::Builder::new()
                .prefix("put-")
                .tempfile_in(&tmp_dir)
                .map_err(|e| io_error("creating temp file", &tmp_dir, e))?;
            use std::io::Write as _;
            temp.write_all(&bytes)
                .and_then(|()| temp.as_file().sync_all())
                .map_err(|e| io_error("writing temp file", temp.path(), e))?;
            let created = persist(&root, &id, temp.into_temp_path())?;
            Ok(Stored {
                id,
                size: bytes.len() as u64,
                created,
            })
        })
        .await
        .map_err(|e| Error::internal(format!("blob write task failed: {e}")))?
    }

    /// A stored blob's bytes, refused when over `max_bytes`.
    pub async fn get(&self, id: &BlobId, max_bytes: u64) -> Result<Bytes, Error> {
        let path = self.path(id);
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let mut file = open(&path, &id)?;
            let size = file
                .metadata()
                .map_err(|e| io_error("reading blob size", &path, e))?
                .len();
            if size > max_bytes {
                return Err(over_limit(size, max_bytes));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .map_err(|e| io_error("reading blob", &path, e))?;
            Ok(Bytes::from(bytes))
        })
        .await
        .map_err(|e| Error::internal(format!("blob read task failed: {e}")))?
    }

    /// Opens a blob for reading in chunks.
    pub async fn reader(&self, id: &BlobId) -> Result<BlobReader, Error> {
        let path = self.path(id);
        let file = match File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing(id)),
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
    pub async fn stat(&self, id: &BlobId) -> Result<u64, Error> {
        let path = self.path(id);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(id)),
            Err(e) => Err(io_error("reading blob size", &path, e)),
        }
    }

    pub async fn entry(&self, id: &BlobId) -> Result<Listed, Error> {
        let path = self.path(id);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Listed {
                id: id.clone(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(id)),
            Err(e) => Err(io_error("reading blob size", &path, e)),
        }
    }

    /// Deletes a blob; false when it was not there.
    pub async fn delete(&self, id: &BlobId) -> Result<bool, Error> {
        let path = self.path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("removing blob", &path, e)),
        }
    }

    /// Every stored blob with its size and when it was last written.
    pub async fn list(&self) -> Result<Vec<Listed>, Error> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list(&root))
            .await
            .map_err(|e| Error::internal(format!("blob listing task failed: {e}")))?
    }

    /// The contents of a small file at the store's root (its marker), if there is one.
    pub async fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.root.join(name);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path, e)),
        }
    }

    /// Writes a small file at the store's root atomically and durably.
    pub async fn write_small(&self, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let root = self.root.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let mut temp = tempfile::Builder::new()
                .prefix("put-")
                .tempfile_in(root.join(TMP_DIR))
                .map_err(|e| io_error("creating temp file", &root, e))?;
            use std::io::Write as _;
            temp.write_all(&bytes)
                .and_then(|()| temp.as_file().sync_all())
                .map_err(|e| io_error("writing temp file", temp.path(), e))?;
            let target = root.join(&name);
            temp.persist(&target)
                .map_err(|e| io_error("renaming into place", &target, e.error))?;
            sync_dir(&root)
        })
        .await
        .map_err(|e| Error::internal(format!("write task failed: {e}")))?
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        shard_dir(&self.root, id).join(id.as_str())
    }
}

fn open(path: &Path, id: &BlobId) -> Result<std::fs::File, Error> {
    match std::fs::File::open(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(id)),
        Err(e) => Err(io_error("opening blob", path, e)),
    }
}

fn missing(id: &BlobId) -> Error {
    Error::not_found(format!("blob {id} not found"))
}

fn list(root: &Path) -> Result<Vec<Listed>, Error> {
    let mut listed = Vec::new();
    let shards =
        std::fs::read_dir(root).map_err(|e| io_error("listing blob directory", root, e))?;
    for shard in shards.flatten() {
        let name = shard.file_name();
        if name == TMP_DIR || !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let entries = std::fs::read_dir(shard.path())
            .map_err(|e| io_error("listing blob directory", &shard.path(), e))?;
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|id| BlobId::parse(id).ok())
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            listed.push(Listed {
                id,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(listed)
}

fn remove_stale_temp(tmp: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let cutoff = SystemTime::now()
        .checked_sub(STALE_TEMP)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|written| written < cutoff);
        if !stale {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove stale temp file")
            }
        }
    }
    removed
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
            return Err(limit_error(self.limit));
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
    pub async fn finish(mut self) -> Result<Stored, Error> {
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
        let id = BlobId::of_hash(self.hasher.finalize());
        let size = self.size;
        let root = self.root.clone();
        let temp = self.path;
        let blob_id = id.clone();
        // Renames and directory fsyncs are blocking calls without async versions worth having.
        let created = tokio::task::spawn_blocking(move || persist(&root, &blob_id, temp))
            .await
            .map_err(|e| Error::internal(format!("blob rename task failed: {e}")))??;
        Ok(Stored { id, size, created })
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
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
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
        Ok(Some(Bytes::from(buf)))
    }
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    tracing::error!(path = %path.display(), error = %err, "{what} failed");
    Error::internal(format!("{what}: {err}"))
}
