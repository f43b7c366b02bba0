//! Blobs in an S3-compatible object store (AWS S3, Garage, MinIO, R2, …) through Apache
//! Arrow's `object_store`, at `<prefix>/<first two hex>/<id>` in one bucket.
//!
//! A PUT is atomic in S3: an object appears whole or not at all, and the store keeps its own
//! replicas, so nothing here fsyncs. A blob that fits in one part is hashed in memory and
//! PUT under its id; a bigger upload streams as a multipart upload to a temp key (its id is
//! known only at the end), is copied to its id (Garage copies by reference to the same
//! blocks) and the temp object deleted.
//!
//! Settings come from the standard `AWS_*` variables: `AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
    aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey},
    path::Path,
};
use pixelmesh_proto::Error;

use crate::{BlobId, Listed, Stored, limit_error, over_limit};

/// Uploads up to this size are one PUT; bigger ones stream in parts of this size.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload sent at once.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: Option<Path>,
}

impl S3Store {
    /// The store for `s3://bucket[/prefix]` (already split), configured from the `AWS_*`
    /// environment; checked with a listing, so a wrong endpoint, bucket or key fails here.
    /// `vars` are more `AWS_*` settings, over the environment's.
    pub async fn open(
        bucket: &str,
        prefix: &str,
        vars: &[(String, String)],
    ) -> Result<S3Store, Error> {
        let mut builder =
            AmazonS3Builder::from_env().with_http_connector(crate::http::HyperConnector);
        for (name, value) in vars {
            let key: AmazonS3ConfigKey = name
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| Error::invalid(format!("unknown S3 setting {name}")))?;
            builder = builder.with_config(key, value);
        }
        let store = builder
            .with_bucket_name(bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "60s")
            // Retries ride out a store node that restarts or fails over, but give up soon
            // enough that a dead store fails the task (and a bad config the start) in
            // seconds rather than object_store's default three minutes.
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(20),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|err| Error::invalid(format!("blob store s3://{bucket}: {err}")))?;
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        let s3 = S3Store {
            store: Arc::new(store),
            bucket: bucket.to_string(),
            prefix,
        };
        s3.probe().await?;
        Ok(s3)
    }

    /// One listing of the store's prefix: fails with a message naming the problem when the
    /// endpoint does not answer, the bucket does not exist or the key is refused.
    async fn probe(&self) -> Result<(), Error> {
        let probe = self.store.list_with_delimiter(self.prefix.as_ref());
        match tokio::time::timeout(Duration::from_secs(30), probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(Error::unavailable(format!(
                "blob store s3://{}: {}",
                self.bucket,
                explain(&err)
            ))),
            Err(_) => Err(Error::unavailable(format!(
                "blob store s3://{}: no answer within 30 s",
                self.bucket
            ))),
        }
    }

    fn path(&self, id: &BlobId) -> Path {
        self.under(&format!("{}/{}", &id.as_str()[..2], id.as_str()))
    }

    fn under(&self, key: &str) -> Path {
        match &self.prefix {
            Some(prefix) => Path::from(format!("{prefix}/{key}")),
            None => Path::from(key),
        }
    }

    pub async fn put(&self, id: BlobId, bytes: Bytes) -> Result<Stored, Error> {
        let size = bytes.len() as u64;
        self.store
            .put(&self.path(&id), PutPayload::from(bytes))
            .await
            .map_err(|err| s3_error("storing", &id, err))?;
        // A PUT does not say whether the key was new; the callers only log it.
        Ok(Stored {
            id,
            size,
            created: true,
        })
    }

    /// Streams `chunks` in: one PUT when they fit in a part, else a multipart upload to a
    /// temp key copied to the blob's id at the end.
    pub async fn put_stream<S>(&self, chunks: S, limit: u64) -> Result<Stored, Error>
    where
        S: Stream<Item = Result<Bytes, Error>> + Send,
    {
        futures::pin_mut!(chunks);
        let mut hasher = blake3::Hasher::new();
        let mut first = BytesMut::new();
        let mut size = 0u64;
        let mut add = |chunk: &Bytes, hasher: &mut blake3::Hasher| {
            size = size.saturating_add(chunk.len() as u64);
            if size > limit {
                return Err(limit_error(limit));
            }
            hasher.update(chunk);
            Ok(size)
        };
        let mut overflow = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            add(&chunk, &mut hasher)?;
            if first.len() + chunk.len() > PART_BYTES {
                overflow = Some(chunk);
                break;
            }
            first.extend_from_slice(&chunk);
        }
        let Some(overflow) = overflow else {
            if first.is_empty() {
                return Err(Error::invalid("blob is empty"));
            }
            let id = BlobId::of_hash(hasher.finalize());
            return self.put(id, first.freeze()).await;
        };
        let temp = self.under(&format!("tmp/{}", ulid::Ulid::new()));
        let upload = self
            .store
            .put_multipart(&temp)
            .await
            .map_err(|err| s3_io_error("starting an upload", err))?;
        let mut writer = Unfinished(Some(WriteMultipart::new_with_chunk_size(
            upload, PART_BYTES,
        )));
        let streamed = async {
            let parts = writer.get();
            parts.put(first.freeze());
            parts.put(overflow);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                add(&chunk, &mut hasher)?;
                let parts = writer.get();
                parts
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|err| s3_io_error("uploading", err))?;
                parts.put(chunk);
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(err) = streamed {
            // Dropping the guard aborts the upload.
            drop(writer);
            return Err(err);
        }
        writer
            .take()
            .finish()
            .await
            .map_err(|err| s3_io_error("finishing an upload", err))?;
        let id = BlobId::of_hash(hasher.finalize());
        let copied = self.store.copy(&temp, &self.path(&id)).await;
        if let Err(err) = self.store.delete(&temp).await {
            // The temp sweep takes it later.
            tracing::warn!(key = %temp, error = %err, "cannot delete a temp object");
        }
        copied.map_err(|err| s3_error("storing", &id, err))?;
        Ok(Stored {
            id,
            size,
            created: true,
        })
    }

    pub async fn get(&self, id: &BlobId, max_bytes: u64) -> Result<Bytes, Error> {
        let got = self
            .store
            .get(&self.path(id))
            .await
            .map_err(|err| s3_error("reading", id, err))?;
        if got.meta.size > max_bytes {
            return Err(over_limit(got.meta.size, max_bytes));
        }
        got.bytes()
            .await
            .map_err(|err| s3_error("reading", id, err))
    }

    /// The blob's size and its bytes as the store streams them.
    pub async fn reader(
        &self,
        id: &BlobId,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, Error>>), Error> {
        let got = self
            .store
            .get(&self.path(id))
            .await
            .map_err(|err| s3_error("reading", id, err))?;
        let size = got.meta.size;
        let id = id.clone();
        let stream = got
            .into_stream()
            .map_err(move |err| s3_error("reading", &id, err))
            .boxed();
        Ok((size, stream))
    }

    pub async fn stat(&self, id: &BlobId) -> Result<u64, Error> {
        self.store
            .head(&self.path(id))
            .await
            .map(|meta| meta.size)
            .map_err(|err| s3_error("reading", id, err))
    }

    pub async fn entry(&self, id: &BlobId) -> Result<Listed, Error> {
        self.store
            .head(&self.path(id))
            .await
            .map(|meta| Listed {
                id: id.clone(),
                size: meta.size,
                modified: system_time(meta.last_modified.timestamp()),
            })
            .map_err(|err| s3_error("reading", id, err))
    }

    /// The first `max` bytes (fewer when the blob is shorter).
    pub async fn head(&self, id: &BlobId, max: usize) -> Result<Vec<u8>, Error> {
        let size = self.stat(id).await?;
        let end = size.min(max as u64);
        if end == 0 {
            return Ok(Vec::new());
        }
        self.store
            .get_range(&self.path(id), 0..end)
            .await
            .map(|bytes| bytes.to_vec())
            .map_err(|err| s3_error("reading", id, err))
    }

    pub async fn delete(&self, id: &BlobId) -> Result<bool, Error> {
        match self.store.delete(&self.path(id)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(s3_error("deleting", id, err)),
        }
    }

    /// Every blob under the prefix; temp objects of uploads that died are deleted on the way
    /// once they are older than [`crate::file::STALE_TEMP`].
    pub async fn list(&self) -> Result<Vec<Listed>, Error> {
        let mut objects = self.store.list(self.prefix.as_ref());
        let mut listed = Vec::new();
        let stale = chrono_cutoff(crate::file::STALE_TEMP);
        let depth = self.prefix.as_ref().map_or(0, |p| p.parts().count());
        while let Some(object) = objects.next().await {
            let object = object.map_err(|err| s3_io_error("listing blobs", err))?;
            let parts: Vec<_> = object.location.parts().skip(depth).collect();
            match parts.as_slice() {
                [shard, _]
                    if shard.as_ref() == "tmp" && object.last_modified.timestamp() < stale =>
                {
                    let _ = self.store.delete(&object.location).await;
                }
                [shard, _] if shard.as_ref() == "tmp" => {}
                [shard, name] => {
                    let Ok(id) = BlobId::parse(name.as_ref()) else {
                        continue;
                    };
                    if shard.as_ref() != &id.as_str()[..2] {
                        continue;
                    }
                    listed.push(Listed {
                        id,
                        size: object.size,
                        modified: system_time(object.last_modified.timestamp()),
                    });
                }
                _ => {}
            }
        }
        Ok(listed)
    }

    pub async fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.store.get(&self.under(name)).await {
            Ok(got) => got
                .bytes()
                .await
                .map(|bytes| Some(bytes.to_vec()))
                .map_err(|err| s3_io_error("reading the store's marker", err)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(s3_io_error("reading the store's marker", err)),
        }
    }

    pub async fn write_small(&self, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        self.store
            .put(&self.under(name), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|err| s3_io_error("writing the store's marker", err))
    }
}

fn system_time(unix_seconds: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0))
}

/// Unix seconds `age` ago.
fn chrono_cutoff(age: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.saturating_sub(age).as_secs()).unwrap_or(0)
}

/// What went wrong, in words a person configuring the store can act on.
fn explain(err: &object_store::Error) -> String {
    let text = format!("{err}");
    let source = std::error::Error::source(err)
        .map(|s| format!("{s:?}"))
        .unwrap_or_default();
    let all = format!("{text} {source}");
    if all.contains("NoSuchBucket") || matches!(err, object_store::Error::NotFound { .. }) {
        "the bucket does not exist (create it, or fix the URL)".to_string()
    } else if all.contains("InvalidAccessKeyId")
        || all.contains("SignatureDoesNotMatch")
        || all.contains("AccessDenied")
        || matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    {
        format!(
            "the store refused the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
             AWS_REGION): {text}"
        )
    } else {
        format!("the store does not answer (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP): {text}")
    }
}

/// A multipart upload not finished yet. Dropped (a failed upload, or a client that went away
/// and took the request's future with it), it aborts the upload in the background, so the
/// store does not keep its parts: S3 stores hold unfinished uploads until told otherwise.
struct Unfinished(Option<WriteMultipart>);

impl Unfinished {
    fn get(&mut self) -> &mut WriteMultipart {
        self.0.as_mut().expect("an unfinished upload")
    }

    fn take(&mut self) -> WriteMultipart {
        self.0.take().expect("an unfinished upload")
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(writer) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a multipart upload is left unfinished: no runtime to abort it");
            return;
        };
        runtime.spawn(async move {
            if let Err(err) = writer.abort().await {
                tracing::warn!(error = %err, "aborting an unfinished multipart upload failed");
            }
        });
    }
}

fn s3_error(what: &str, id: &BlobId, err: object_store::Error) -> Error {
    match err {
        object_store::Error::NotFound { .. } => Error::not_found(format!("blob {id} not found")),
        err => {
            tracing::warn!(blob = %id, error = %err, "object store {what} failed");
            Error::unavailable(format!("object store {what} blob {id}: {err}"))
        }
    }
}

fn s3_io_error(what: &str, err: object_store::Error) -> Error {
    tracing::warn!(error = %err, "object store {what} failed");
    Error::unavailable(format!("object store {what}: {err}"))
}
