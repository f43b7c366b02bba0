//! Content-addressed blob stores, chosen by URL.
//!
//! A blob's id is the BLAKE3 hash of its bytes as 64 lowercase hex characters; it lives at
//! `<first two hex>/<id>` under the store's root, written atomically, so a reader never sees
//! part of one and storing the same bytes twice stores them once.
//!
//! * `file:///path` ([`file`]): a directory; the embedded default, and the way to share bytes
//!   between roles on one host (`pixelmesh all`, or one volume mounted into every container);
//! * `s3://bucket[/prefix]` ([`s3`]): any S3-compatible object store, configured from the
//!   standard `AWS_*` variables.
//!
//! Storage keeps the metadata (who owns which blob) and is the only role that deletes. Every
//! role that reads or writes bytes directly opens the same URL; storage leaves a marker with
//! the store's id at its root ([`BlobStore::claim`]), and the others compare it with storage's
//! ([`BlobStore::identity`]), so roles that disagree on the store refuse to start instead of
//! writing where storage will never look.

pub mod file;
mod http;
pub mod s3;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream::BoxStream};
use pixelmesh_common::grpc::Channel;
use pixelmesh_common::media::{IMAGE_HEADER_BYTES, image_header};
use pixelmesh_proto::{Error, v1, v1::storage_client::StorageClient};

/// A blob id checked to be 64 lowercase hex characters, so it is safe as a file name or key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId::of_hash(blake3::hash(bytes))
    }

    fn of_hash(hash: blake3::Hash) -> BlobId {
        BlobId(hash.to_hex().to_string())
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

/// A blob just written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: BlobId,
    pub size: u64,
    /// False when the same bytes were stored already (as far as the store can tell).
    pub created: bool,
}

/// A blob as a listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: BlobId,
    pub size: u64,
    /// When it was last written: a sweep leaves recent ones alone.
    pub modified: SystemTime,
}

/// A blob's bytes in chunks, with its size known up front.
pub struct BlobStream {
    pub size: u64,
    pub chunks: BoxStream<'static, Result<Bytes, Error>>,
}

/// The file at a store's root that names it.
const MARKER: &str = "pixelmesh-store";
const MARKER_PREFIX: &str = "pixelmesh blob store ";

/// A blob store, opened from its URL.
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Backend,
    url: String,
    max_blob_bytes: u64,
}

#[derive(Debug, Clone)]
enum Backend {
    File(file::FileStore),
    S3(s3::S3Store),
}

impl BlobStore {
    /// Opens the store at `url` (`file:///abs/path` or `s3://bucket[/prefix]`), refusing
    /// blobs over `max_blob_bytes`. An S3 store is reached once here, so an unreachable
    /// endpoint, a missing bucket or refused credentials fail now, each named.
    pub async fn open(url: &str, max_blob_bytes: u64) -> Result<BlobStore, Error> {
        BlobStore::open_with(url, max_blob_bytes, &[]).await
    }

    /// [`BlobStore::open`] with `AWS_*` settings given here over the environment's (a
    /// client of several stores, such as a test).
    pub async fn open_with(
        url: &str,
        max_blob_bytes: u64,
        vars: &[(String, String)],
    ) -> Result<BlobStore, Error> {
        let backend = match parse_url(url)? {
            Location::File(root) => Backend::File(file::FileStore::open(root).await?),
            Location::S3 { bucket, prefix } => {
                Backend::S3(s3::S3Store::open(&bucket, &prefix, vars).await?)
            }
        };
        Ok(BlobStore {
            backend,
            url: url.to_string(),
            max_blob_bytes,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// The directory of a `file://` store.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::File(store) => Some(store.root()),
            Backend::S3(_) => None,
        }
    }

    fn limit(&self, max_bytes: u64) -> u64 {
        match max_bytes {
            0 => self.max_blob_bytes,
            n => n.min(self.max_blob_bytes),
        }
    }

    /// Stores bytes already in memory (a worker's output).
    pub async fn put(&self, bytes: Bytes) -> Result<Stored, Error> {
        if bytes.is_empty() {
            return Err(Error::invalid("blob is empty"));
        }
        let limit = self.limit(0);
        if bytes.len() as u64 > limit {
            return Err(limit_error(limit));
        }
        let id = BlobId::of(&bytes);
        let stored = match &self.backend {
            Backend::File(store) => store.put(id, bytes).await?,
            Backend::S3(store) => store.put(id, bytes).await?,
        };
        tracing::debug!(blob = %stored.id, size = stored.size, created = stored.created, "blob stored");
        Ok(stored)
    }

    /// Streams `chunks` in, refused past `max_bytes` (0: only the store's own limit). An
    /// error from `chunks` (the client went away) stores nothing.
    pub async fn put_stream<S>(&self, chunks: S, max_bytes: u64) -> Result<Stored, Error>
    where
        S: Stream<Item = Result<Bytes, Error>> + Send,
    {
        let limit = self.limit(max_bytes);
        let stored = match &self.backend {
            Backend::File(store) => {
                let mut writer = store.writer(limit).await?;
                futures::pin_mut!(chunks);
                while let Some(chunk) = chunks.next().await {
                    writer.write(&chunk?).await?;
                }
                writer.finish().await?
            }
            Backend::S3(store) => store.put_stream(chunks, limit).await?,
        };
        tracing::debug!(blob = %stored.id, size = stored.size, created = stored.created, "blob stored");
        Ok(stored)
    }

    /// A blob's bytes, refused when over `max_bytes`.
    pub async fn get(&self, id: &BlobId, max_bytes: u64) -> Result<Bytes, Error> {
        match &self.backend {
            Backend::File(store) => store.get(id, max_bytes).await,
            Backend::S3(store) => store.get(id, max_bytes).await,
        }
    }

    /// A blob's bytes as a stream, for downloads.
    pub async fn reader(&self, id: &BlobId) -> Result<BlobStream, Error> {
        match &self.backend {
            Backend::File(store) => {
                let reader = store.reader(id).await?;
                let size = reader.size();
                let chunks = futures::stream::try_unfold(reader, |mut reader| async move {
                    Ok(reader.next_chunk().await?.map(|chunk| (chunk, reader)))
                })
                .boxed();
                Ok(BlobStream { size, chunks })
            }
            Backend::S3(store) => {
                let (size, chunks) = store.reader(id).await?;
                Ok(BlobStream { size, chunks })
            }
        }
    }

    /// A stored blob's size.
    pub async fn stat(&self, id: &BlobId) -> Result<u64, Error> {
        match &self.backend {
            Backend::File(store) => store.stat(id).await,
            Backend::S3(store) => store.stat(id).await,
        }
    }

    /// A stored blob's size and when it was last written; `None` when it is not stored.
    pub async fn entry(&self, id: &BlobId) -> Result<Option<Listed>, Error> {
        let entry = match &self.backend {
            Backend::File(store) => store.entry(id).await,
            Backend::S3(store) => store.entry(id).await,
        };
        match entry {
            Ok(entry) => Ok(Some(entry)),
            Err(err) if err.code == pixelmesh_proto::ErrorCode::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Whether a blob is stored.
    pub async fn exists(&self, id: &BlobId) -> Result<bool, Error> {
        match self.stat(id).await {
            Ok(_) => Ok(true),
            Err(err) if err.code == pixelmesh_proto::ErrorCode::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The first bytes of a stored blob, at most `max`.
    pub async fn head(&self, id: &BlobId, max: usize) -> Result<Vec<u8>, Error> {
        match &self.backend {
            Backend::File(store) => {
                let mut reader = store.reader(id).await?;
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
            Backend::S3(store) => store.head(id, max).await,
        }
    }

    /// Deletes a blob; false when it was not there.
    pub async fn delete(&self, id: &BlobId) -> Result<bool, Error> {
        match &self.backend {
            Backend::File(store) => store.delete(id).await,
            Backend::S3(store) => store.delete(id).await,
        }
    }

    /// Every stored blob.
    pub async fn list(&self) -> Result<Vec<Listed>, Error> {
        match &self.backend {
            Backend::File(store) => store.list().await,
            Backend::S3(store) => store.list().await,
        }
    }

    /// The store's id from its marker, writing a new one when it has none: storage's side.
    pub async fn claim(&self) -> Result<String, Error> {
        if let Some(id) = self.identity().await? {
            return Ok(id);
        }
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let marker = format!("{MARKER_PREFIX}{id}\n").into_bytes();
        match &self.backend {
            Backend::File(store) => store.write_small(MARKER, marker).await?,
            Backend::S3(store) => store.write_small(MARKER, marker).await?,
        }
        tracing::info!(store = %self.url, id = %id, "blob store marked");
        Ok(id)
    }

    /// The store's id from its marker; `None` for a store storage has never opened.
    pub async fn identity(&self) -> Result<Option<String>, Error> {
        let marker = match &self.backend {
            Backend::File(store) => store.read_small(MARKER).await?,
            Backend::S3(store) => store.read_small(MARKER).await?,
        };
        let Some(marker) = marker else {
            return Ok(None);
        };
        String::from_utf8(marker)
            .ok()
            .and_then(|text| {
                text.strip_prefix(MARKER_PREFIX)
                    .map(|id| id.trim().to_string())
            })
            .filter(|id| !id.is_empty() && id.len() <= 64)
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "blob store {}: {MARKER} is not a pixelmesh store marker",
                    self.url
                ))
            })
    }

    /// Checks that this is the store storage uses (`storage`, as storage at `storage_addr`
    /// describes it), so a role never writes where storage does not look.
    pub async fn verify(
        &self,
        storage: &v1::BlobStoreInfo,
        storage_addr: &str,
    ) -> Result<(), Error> {
        match self.identity().await? {
            Some(id) if id == storage.id => Ok(()),
            found => Err(Error::invalid(format!(
                "blob store {} is not the one storage uses: storage at {storage_addr} uses {} \
                 (store id {}), and {} holds {}. Give every role the same --blob-store \
                 (PIXELMESH_BLOB_STORE), and for file:// the same directory on a shared \
                 filesystem, or leave it unset to move bytes through storage",
                self.url,
                storage.url,
                storage.id,
                self.url,
                match found {
                    Some(id) => format!("store id {id}"),
                    None => "no pixelmesh store marker".to_string(),
                }
            ))),
        }
    }
}

/// How long a role waits for storage to answer at its start before giving up.
const STORAGE_WAIT: Duration = Duration::from_secs(60);

/// Opens the store at `url` for a role other than storage (gateway, filter) and checks that
/// it is the one storage uses, waiting for storage to answer first (roles start in any
/// order). Any mismatch is an error naming both stores: never a half-working mesh.
pub async fn open_shared(
    url: &str,
    storage: &mut StorageClient<Channel>,
    storage_url: &str,
) -> Result<BlobStore, Error> {
    let started = tokio::time::Instant::now();
    let info = loop {
        match storage.get_blob_store(v1::GetBlobStoreRequest {}).await {
            Ok(info) => break info.into_inner(),
            Err(status) if started.elapsed() < STORAGE_WAIT => {
                tracing::info!(storage = %storage_url, error = %status.message(), "waiting for storage to check the blob store");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => {
                return Err(Error::unavailable(format!(
                    "storage at {storage_url} did not answer within {} s, so the blob store \
                     {url} cannot be checked: {}",
                    STORAGE_WAIT.as_secs(),
                    status.message()
                )));
            }
        }
    };
    let store = BlobStore::open(url, info.max_blob_bytes).await?;
    store.verify(&info, storage_url).await?;
    tracing::info!(store = %url, id = %info.id, "blob store shared with storage");
    Ok(store)
}

/// Where a store URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

fn parse_url(url: &str) -> Result<Location, Error> {
    let bad = |why: &str| Error::invalid(format!("blob store {url:?}: {why}"));
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad(
                "a file:// URL needs an absolute path (file:///var/lib/pixelmesh)",
            ));
        }
        if path.split('/').any(|part| part == "..") {
            return Err(bad("the path may not contain .."));
        }
        return Ok(Location::File(PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        // S3's bucket naming rules: 3 to 63 of lowercase letters, digits, '.' and '-',
        // starting and ending with a letter or digit.
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !valid_bucket {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-'",
            ));
        }
        let valid_prefix = prefix.split('/').all(|part| {
            prefix.is_empty()
                || (!part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        });
        if !valid_prefix || prefix.len() > 256 {
            return Err(bad(
                "the prefix must be '/'-separated names of letters, digits, '-', '_' and '.'",
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        });
    }
    Err(bad("use file:///path or s3://bucket[/prefix]"))
}

/// The `file://` URL of a directory.
pub fn file_url(dir: &std::path::Path) -> Result<String, Error> {
    let absolute = std::path::absolute(dir)
        .map_err(|err| Error::invalid(format!("{}: {err}", dir.display())))?;
    let text = absolute
        .to_str()
        .ok_or_else(|| Error::invalid(format!("{} is not UTF-8", absolute.display())))?;
    Ok(format!("file://{text}"))
}

/// A write past its limit.
fn limit_error(limit: u64) -> Error {
    Error::too_large(format!("blob exceeds the limit of {limit} bytes"))
}

/// A read of a blob bigger than the reader takes.
fn over_limit(size: u64, max: u64) -> Error {
    Error::too_large(format!(
        "blob is {size} bytes, over the limit of {max} bytes"
    ))
}

/// Appends to `head` what it still lacks of a file's first [`IMAGE_HEADER_BYTES`] from
/// `chunk`, the upload's next chunk: what [`info`] reads the image header from.
pub fn extend_head(head: &mut Vec<u8>, chunk: &[u8]) {
    let take = chunk
        .len()
        .min(IMAGE_HEADER_BYTES.saturating_sub(head.len()));
    head.extend_from_slice(&chunk[..take]);
}

/// What storage tells of a blob from its size and first bytes: its image header.
pub fn info(id: &str, size: u64, head: &[u8]) -> v1::BlobInfo {
    let header = image_header(head);
    v1::BlobInfo {
        id: id.to_string(),
        size_bytes: size,
        width: header.map_or(0, |h| h.width),
        height: header.map_or(0, |h| h.height),
        bytes_per_pixel: header.map_or(0, |h| h.bytes_per_pixel),
        frames: header.map_or(0, |h| h.frames),
    }
}

#[cfg(test)]
mod tests;
