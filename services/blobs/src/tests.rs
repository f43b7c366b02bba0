//! The `file://` store end to end, and URL parsing. The `s3://` store is tested against a
//! real Garage in `tests/tests/e2e/objects.rs`.

use std::time::{Duration, SystemTime};

use pixelmesh_proto::ErrorCode;

use super::*;

async fn store(max_blob_bytes: u64) -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = file_url(&dir.path().join("blobs")).expect("url");
    let blobs = BlobStore::open(&url, max_blob_bytes).await.expect("open");
    (dir, blobs)
}

fn root(blobs: &BlobStore) -> &std::path::Path {
    blobs.local_root().expect("a file store")
}

async fn put(blobs: &BlobStore, max_bytes: u64, chunks: &[&[u8]]) -> Result<Stored, Error> {
    let chunks: Vec<Result<Bytes, Error>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    blobs
        .put_stream(futures::stream::iter(chunks), max_bytes)
        .await
}

async fn read_all(blobs: &BlobStore, id: &BlobId) -> Vec<u8> {
    let mut reader = blobs.reader(id).await.expect("reader");
    let mut out = Vec::new();
    while let Some(chunk) = reader.chunks.next().await {
        let chunk = chunk.expect("chunk");
        assert!(chunk.len() <= file::CHUNK_BYTES);
        out.extend_from_slice(&chunk);
    }
    assert_eq!(out.len() as u64, reader.size);
    out
}

fn temp_files(blobs: &BlobStore) -> usize {
    std::fs::read_dir(root(blobs).join("tmp"))
        .expect("tmp dir")
        .count()
}

#[tokio::test]
async fn same_bytes_are_stored_once() {
    let (_dir, blobs) = store(1 << 20).await;
    let a = put(&blobs, 0, &[b"hello ", b"world"]).await.expect("put a");
    let b = put(&blobs, 0, &[b"hello world"]).await.expect("put b");
    assert!(a.created);
    assert!(!b.created);
    assert_eq!(a.id, b.id);
    assert_eq!(
        a.id.as_str(),
        blake3::hash(b"hello world").to_hex().as_str()
    );
    assert_eq!(a.size, 11);
    let c = blobs
        .put(Bytes::from_static(b"hello world"))
        .await
        .expect("put c");
    assert_eq!((c.id.clone(), c.created), (a.id.clone(), false));
    assert_eq!(read_all(&blobs, &a.id).await, b"hello world");
    assert_eq!(blobs.stat(&a.id).await.expect("stat"), 11);
    assert_eq!(
        blobs.get(&a.id, 11).await.expect("get"),
        Bytes::from_static(b"hello world")
    );
    let shard = root(&blobs).join(&a.id.as_str()[..2]);
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
    while let Some(chunk) = reader.chunks.next().await {
        sizes.push(chunk.expect("chunk").len());
    }
    let chunk = file::CHUNK_BYTES;
    assert_eq!(sizes, [chunk, chunk, chunk, 200_000 - 3 * chunk]);
    assert_eq!(read_all(&blobs, &info.id).await, data);
    assert_eq!(
        blobs.head(&info.id, 10).await.expect("head"),
        data[..10].to_vec()
    );
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
    let err = blobs
        .put(Bytes::from_static(b"12345678901"))
        .await
        .unwrap_err();
    assert_eq!(err.message, "blob exceeds the limit of 10 bytes");
    assert_eq!(temp_files(&blobs), 0);

    // Exactly at the limit is fine; a reader's own limit refuses it.
    let stored = put(&blobs, 0, &[b"1234567890"])
        .await
        .expect("at the limit");
    let err = blobs.get(&stored.id, 9).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ResourceExhausted);
    assert_eq!(err.message, "blob is 10 bytes, over the limit of 9 bytes");
}

#[tokio::test]
async fn empty_blobs_are_refused() {
    let (_dir, blobs) = store(10).await;
    let err = put(&blobs, 0, &[]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(
        blobs.put(Bytes::new()).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(temp_files(&blobs), 0);
}

#[tokio::test]
async fn a_failed_upload_leaves_nothing() {
    let (_dir, blobs) = store(1 << 20).await;
    let chunks = vec![
        Ok(Bytes::from_static(b"partial")),
        Err(Error::unavailable("the client went away")),
    ];
    let err = blobs
        .put_stream(futures::stream::iter(chunks), 0)
        .await
        .unwrap_err();
    assert_eq!(err.message, "the client went away");
    assert_eq!(temp_files(&blobs), 0);
    assert!(blobs.list().await.expect("list").is_empty());
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
        blobs.reader(&missing).await.err().map(|e| e.code),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        blobs.stat(&missing).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        blobs.get(&missing, 10).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert!(!blobs.exists(&missing).await.expect("exists"));
    assert!(!blobs.delete(&missing).await.expect("delete"));
}

#[tokio::test]
async fn only_stale_temp_files_are_removed_at_open() {
    // Another role sharing the directory may be writing a temp file right now.
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join("blobs").join("tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    std::fs::write(tmp.join("put-crashed"), b"half").expect("write");
    std::fs::File::options()
        .write(true)
        .open(tmp.join("put-crashed"))
        .and_then(|f| f.set_modified(SystemTime::now() - file::STALE_TEMP * 2))
        .expect("age");
    std::fs::write(tmp.join("put-writing"), b"half").expect("write");
    let url = file_url(&dir.path().join("blobs")).expect("url");
    BlobStore::open(&url, 10).await.expect("open");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["put-writing"]);
}

#[tokio::test]
async fn listing_and_deleting() {
    let (_dir, blobs) = store(1 << 20).await;
    let a = blobs.put(Bytes::from_static(b"a")).await.expect("a").id;
    let b = blobs.put(Bytes::from_static(b"bb")).await.expect("b").id;
    // Neither the marker nor stray files are blobs.
    blobs.claim().await.expect("claim");
    std::fs::write(root(&blobs).join("ab").join("not-a-blob"), b"x").ok();
    let mut listed: Vec<_> = blobs
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|l| (l.id, l.size))
        .collect();
    listed.sort_by_key(|x| x.1);
    assert_eq!(listed, [(a.clone(), 1), (b.clone(), 2)]);
    let recent = blobs.list().await.expect("list")[0].modified;
    assert!(recent > SystemTime::now() - Duration::from_secs(60));
    assert!(blobs.delete(&a).await.expect("delete"));
    assert!(!blobs.exists(&a).await.expect("exists"));
    assert!(blobs.exists(&b).await.expect("exists"));
}

#[tokio::test]
async fn the_marker_tells_stores_apart() {
    let (_dir, ours) = store(10).await;
    assert_eq!(ours.identity().await.expect("identity"), None);
    let id = ours.claim().await.expect("claim");
    // Claiming again, or reopening, keeps the id.
    assert_eq!(ours.claim().await.expect("claim"), id);
    let again = BlobStore::open(ours.url(), 10).await.expect("reopen");
    assert_eq!(again.identity().await.expect("identity"), Some(id.clone()));
    let storage = |id: &str| v1::BlobStoreInfo {
        id: id.to_string(),
        url: "s3://pixelmesh".into(),
        max_blob_bytes: 10,
    };
    again
        .verify(&storage(&id), "http://storage:50053")
        .await
        .expect("same store");

    // Another directory: never marked, then marked as another store.
    let (_other_dir, other) = store(10).await;
    let err = other
        .verify(&storage(&id), "http://storage:50053")
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(
        err.message.contains("is not the one storage uses")
            && err
                .message
                .contains("storage at http://storage:50053 uses s3://pixelmesh")
            && err.message.contains("no pixelmesh store marker"),
        "{}",
        err.message
    );
    let other_id = other.claim().await.expect("claim");
    assert_ne!(other_id, id);
    let err = other
        .verify(&storage(&id), "http://storage:50053")
        .await
        .unwrap_err();
    assert!(
        err.message.contains(&format!("store id {other_id}")),
        "{}",
        err.message
    );

    // A marker that is not ours is an error, not a silent new store.
    std::fs::write(root(&other).join(MARKER), b"something else").expect("write");
    let err = other.claim().await.unwrap_err();
    assert!(
        err.message.contains("is not a pixelmesh store marker"),
        "{}",
        err.message
    );
}

#[test]
fn urls_are_checked() {
    assert_eq!(
        parse_url("file:///var/lib/pm").unwrap(),
        Location::File(PathBuf::from("/var/lib/pm"))
    );
    assert_eq!(
        parse_url("s3://pixelmesh").unwrap(),
        Location::S3 {
            bucket: "pixelmesh".into(),
            prefix: String::new()
        }
    );
    assert_eq!(
        parse_url("s3://my.bucket-1/a/b_c/").unwrap(),
        Location::S3 {
            bucket: "my.bucket-1".into(),
            prefix: "a/b_c".into()
        }
    );
    for (url, why) in [
        ("file://relative/path", "absolute path"),
        ("file:///a/../etc", "may not contain .."),
        ("s3://", "bucket name"),
        ("s3://ab", "bucket name"),
        ("s3://Upper", "bucket name"),
        ("s3://-bucket", "bucket name"),
        ("s3://bucket/a//b", "prefix"),
        ("s3://bucket/../b", "prefix"),
        ("s3://bucket/a b", "prefix"),
        ("http://example.com/bucket", "use file:///path or s3://"),
        ("/var/lib/pm", "use file:///path or s3://"),
    ] {
        let err = parse_url(url).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{url}");
        assert!(err.message.contains(why), "{url}: {}", err.message);
    }
}
