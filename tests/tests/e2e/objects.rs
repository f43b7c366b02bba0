//! Blobs in a real object store: the mesh against Garage, one node and a replicated cluster,
//! every role a real process; and the start-up checks that refuse a half-working mesh.

use std::{
    collections::HashSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use pixelmesh_blobs::{BlobId, BlobStore};
use pixelmesh_proto::v1::{Operation, Resize, Tiling, operation::Op};
use pixelmesh_tests::{
    Cluster, ClusterOptions, api, blob_files, free_port, garage::Garage, node_bin, png, poll,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const STORE: &str = "s3://pixelmesh/mesh";

fn resize(width: u32) -> Vec<Operation> {
    vec![Operation {
        op: Some(Op::Resize(Resize {
            width,
            ..Default::default()
        })),
    }]
}

/// Every role's environment: the store's URL and the `AWS_*` settings of node `node`.
fn store_env(garage: &Garage, node: usize) -> Vec<(String, String)> {
    let mut env = garage.env(node);
    env.push(("PIXELMESH_BLOB_STORE".into(), STORE.into()));
    env
}

/// The test's own view of the bucket, through the same crate the roles use.
async fn open_store(garage: &Garage) -> BlobStore {
    BlobStore::open_with(STORE, u64::MAX, &garage.env(0))
        .await
        .expect("open the bucket")
}

/// The mesh against a one-node Garage: uploads, tiles and outputs all land in the bucket,
/// downloads (one by one and the ZIP) come from it, a delete removes outputs from it, and
/// storage's own directory never holds a blob.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_garage_holds_every_blob() {
    let garage = Garage::single();
    let cluster = Cluster::start(ClusterOptions {
        env: store_env(&garage, 0),
        // The big image is cut into tiles, which go through the store too.
        tile_size: Some(256),
        tile_above_pixels: Some(300_000),
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let mut images: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("small-{i}.png"), png(300, 200, i)))
        .collect();
    images.push(("big.png".into(), png(900, 600, 99)));
    let pipeline = vec![Operation {
        op: Some(Op::Blur(pixelmesh_proto::v1::Blur { sigma: 1.0 })),
    }];
    let job = api::submit_tiled(&mut client, &images, pipeline, Tiling::Auto).await;
    let id = job.summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    api::assert_completed(&job, || format!("{}\n{}", cluster.logs(), garage.logs()));
    let big = job
        .images
        .iter()
        .find(|i| i.name == "big.png")
        .expect("big");
    assert!(big.tiles_total > 1, "the big image was tiled: {big:?}");

    let store = open_store(&garage).await;
    let stored: HashSet<String> = store
        .list()
        .await
        .expect("list the bucket")
        .into_iter()
        .map(|blob| blob.id.to_string())
        .collect();
    for image in &job.images {
        let output = image.output.as_ref().expect("output");
        assert!(
            stored.contains(&image.input_blob_id),
            "input of {}",
            image.name
        );
        assert!(stored.contains(&output.blob_id), "output of {}", image.name);
        let bytes = api::download(&mut client, &id, image.index).await;
        assert_eq!(bytes.len() as u64, output.size_bytes);
        let decoded = image::load_from_memory(&bytes).expect("the output decodes");
        assert_eq!(
            (decoded.width(), decoded.height()),
            (output.width, output.height)
        );
    }
    // Inputs, outputs and the big image's tiles (in and out).
    assert!(
        stored.len() > 2 * images.len(),
        "{} blobs in the bucket",
        stored.len()
    );
    let bundle = api::download_outputs(&mut client, &id).await;
    let zip = zip::ZipArchive::new(std::io::Cursor::new(bundle)).expect("the ZIP reads");
    assert_eq!(zip.len(), images.len() + 2, "outputs and two manifests");

    let storage_dir = cluster.data.path().join("storage");
    assert!(
        storage_dir.join("meta").is_dir(),
        "storage keeps its metadata"
    );
    assert_eq!(blob_files(&storage_dir), Vec::<String>::new());

    client
        .delete_job(pixelmesh_proto::v1::DeleteJobRequest { id: id.clone() })
        .await
        .expect("delete");
    for image in &job.images {
        let output = BlobId::parse(&image.output.as_ref().expect("output").blob_id).unwrap();
        assert!(
            !store.exists(&output).await.expect("stat"),
            "the deleted job's output {output} left the bucket"
        );
    }
}

/// Runs `pixelmesh <args>` with `env` and expects it to refuse to start: a non-zero exit
/// within a minute. Returns what it printed.
fn refused_start(args: &[String], env: &[(String, String)]) -> String {
    let mut child = Command::new(node_bin())
        .args(args)
        .env("PIXELMESH_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pixelmesh");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pixelmesh {args:?} still runs after a minute; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "pixelmesh {args:?} started: {stderr}");
    stderr
}

fn storage_args(dir: &Path) -> Vec<String> {
    vec![
        "storage".into(),
        "--storage-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--storage-dir".into(),
        dir.display().to_string(),
    ]
}

/// Each kind of bad store configuration stops the role at start with an error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_store_configuration_is_refused_at_start() {
    let garage = Garage::single();
    let dir = tempfile::tempdir().expect("tempdir");
    let with = |changes: &[(&str, &str)]| {
        let mut env = store_env(&garage, 0);
        for (key, value) in changes {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        env
    };
    let closed = format!("http://127.0.0.1:{}", free_port());
    for (changes, expected) in [
        (
            vec![("AWS_ENDPOINT_URL", closed.as_str())],
            "the store does not answer",
        ),
        (
            vec![(
                "AWS_SECRET_ACCESS_KEY",
                "0000000000000000000000000000000000000000",
            )],
            "refused the credentials",
        ),
        (
            vec![("PIXELMESH_BLOB_STORE", "s3://no-such-bucket")],
            "the bucket does not exist",
        ),
        (
            vec![("PIXELMESH_BLOB_STORE", "ftp://example.com/x")],
            "use file:///path or s3://bucket[/prefix]",
        ),
    ] {
        let printed = refused_start(&storage_args(dir.path()), &with(&changes));
        assert!(printed.contains(expected), "{changes:?}: {printed}");
    }

    // Roles that disagree on the store: storage on the bucket, a filter on a directory, a
    // gateway on another prefix. Neither starts half-working.
    let cluster = Cluster::start(ClusterOptions {
        env: store_env(&garage, 0),
        ..Default::default()
    })
    .await;
    let storage_url = format!("http://127.0.0.1:{}", cluster.storage.port);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let printed = refused_start(
        &[
            "filter".into(),
            "--filter-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--blob-store".into(),
            format!("file://{}", elsewhere.path().display()),
        ],
        &[
            ("PIXELMESH_NATS_URL".into(), cluster.nats.url()),
            ("PIXELMESH_STORAGE_URL".into(), storage_url.clone()),
        ],
    );
    assert!(
        printed.contains("is not the one storage uses") && printed.contains(STORE),
        "{printed}"
    );
    let printed = refused_start(
        &[
            "gateway".into(),
            "--gateway-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
        &with(&[
            ("PIXELMESH_BLOB_STORE", "s3://pixelmesh/other"),
            ("PIXELMESH_NATS_URL", &cluster.nats.url()),
            ("PIXELMESH_STORAGE_URL", &storage_url),
        ]),
    );
    assert!(
        printed.contains("is not the one storage uses")
            && printed.contains("no pixelmesh store marker"),
        "{printed}"
    );
}

/// With `--blob-store-wait-secs`, storage started before its store waits for it instead of
/// exiting: here the store's endpoint is a relay to the Garage opened only once storage has
/// said it is waiting, and storage then comes up on that same process.
#[tokio::test(flavor = "multi_thread")]
async fn storage_waits_for_a_store_that_starts_after_it() {
    let garage = Garage::single();
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = format!("127.0.0.1:{}", free_port());
    let mut env = store_env(&garage, 0);
    let target = env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| {
            v.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .expect("the garage endpoint");
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL".into(), format!("http://{relay}")));
    let log = dir.path().join("storage.log");
    let mut args = storage_args(&dir.path().join("data"));
    args.extend(["--blob-store-wait-secs".into(), "60".into()]);
    let mut storage = Command::new(node_bin())
        .args(&args)
        .env("PIXELMESH_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start storage");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    poll(
        "storage waiting for its store",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            read_log()
                .contains("blob store not ready, waiting")
                .then_some(())
                .ok_or(read_log())
        },
    )
    .await;
    // The store comes up: a relay to the Garage on the endpoint storage was given.
    let listener = tokio::net::TcpListener::bind(&relay)
        .await
        .expect("relay port");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    poll(
        "storage listening once its store answers",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            read_log()
                .contains("storage listening")
                .then_some(())
                .ok_or(read_log())
        },
    )
    .await;
    assert!(
        storage.try_wait().expect("wait").is_none(),
        "storage exited: {}",
        read_log()
    );
    let _ = storage.kill();
    let _ = storage.wait();
}

/// A three-node Garage storing every object on each node: one node is killed in the middle
/// of a 200-image batch, and every image still completes, its output readable.
#[tokio::test(flavor = "multi_thread")]
async fn a_garage_node_dies_mid_batch_and_nothing_is_lost() {
    let mut garage = Garage::cluster(3);
    let cluster = Cluster::start(ClusterOptions {
        filters: 2,
        env: store_env(&garage, 0),
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<(String, Vec<u8>)> = (0..200u32)
        .map(|i| (format!("image-{i}.png"), png(96, 64, i as u8)))
        .collect();
    let job = api::submit(&mut client, &images, resize(48)).await;
    let id = job.summary.expect("summary").id;
    api::watch_until(&mut client, &id, JOB_TIMEOUT, |event| {
        event.summary.as_ref().is_some_and(|s| s.done >= 30)
    })
    .await;
    garage.nodes[2].kill();
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    api::assert_completed(&job, || format!("{}\n{}", cluster.logs(), garage.logs()));
    assert_eq!(job.images.len(), 200);
    api::assert_distinct_outputs(&mut client, &job, (48, 32)).await;
}

/// An upload that dies half-way (its request dropped mid-stream, as when a client goes away)
/// leaves no multipart upload in the bucket: S3 stores keep unfinished parts until told to
/// abort them.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_dropped_half_way_leaves_no_parts_in_the_bucket() {
    let garage = Garage::single();
    let store = open_store(&garage).await;
    // More than one part's worth, then a client that sends nothing more.
    let first: Result<bytes::Bytes, pixelmesh_proto::Error> =
        Ok(bytes::Bytes::from(vec![7u8; 9 << 20]));
    let chunks = futures::stream::iter([first]).chain(futures::stream::pending());
    let upload = tokio::spawn(async move { store.put_stream(chunks, u64::MAX).await });
    let unfinished = |want_some: bool| {
        let count = garage.unfinished_uploads();
        async move {
            if (count > 0) == want_some {
                Ok(count)
            } else {
                Err(format!("{count} unfinished uploads"))
            }
        }
    };
    let begun = poll(
        "the multipart upload begun",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || unfinished(true),
    )
    .await;
    assert_eq!(begun, 1);
    upload.abort();
    assert!(upload.await.expect_err("aborted").is_cancelled());
    poll(
        "the dropped upload aborted in the store",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || unfinished(false),
    )
    .await;
}
