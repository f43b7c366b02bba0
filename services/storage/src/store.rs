//! The one way into sled from async code: a writer thread for every change, a bounded pool of
//! blocking threads for reads.
//!
//! # Why
//!
//! sled 0.34 guards its trees with one process-wide reader-writer lock: a transaction takes it
//! for writing, every other call (a `get`, an `insert`, an iterator step, a flush) for
//! reading. A flush holds its read guard while it waits for the log's IO buffers to reach the
//! disk, and parking_lot's lock lets no new reader in while a writer waits. When storage ran
//! transactions and `flush_async` from many request tasks at once, this made a cycle under
//! load: a transaction waited for the readers, a flush held a read guard while it waited for
//! the log flusher, and the flusher waited behind the writer. Because reads also ran on the
//! async worker threads, both runtime threads blocked, storage stopped accepting connections,
//! and only `kill -9` recovered it.
//!
//! # How
//!
//! * **One writer.** Every change (a transaction, a single insert or removal) is a closure
//!   sent to one dedicated thread, which runs the changes that are waiting one after another,
//!   then flushes once and answers each of them (group commit). So a flush never overlaps a
//!   transaction, and sled's own background flusher is off (`flush_every_ms(None)`): the
//!   writer's flush is the only one. A change is answered only once it is durable.
//! * **Concurrent reads off the runtime.** Reads (`get`, scans) run on tokio's blocking pool,
//!   at most [`MAX_READS`] at once; they take sled's read guard briefly and never wait for a
//!   flush, so they never join the cycle. Multi-key reads that must agree (a job and its
//!   images) use the job's version instead of a read transaction (see [`Meta::job`]).
//! * **No sled call on an async thread.** The gRPC handlers reach sled only through
//!   [`Store::read`] and [`Store::write`], so a slow disk slows answers, never the runtime.
//!
//! [`Meta::job`]: crate::meta::Meta::job

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use pixelmesh_proto::Error;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::meta::Meta;

/// Reads running on blocking threads at once; more wait for a permit.
pub const MAX_READS: usize = 64;
/// Changes waiting for the writer; a full queue makes callers wait (backpressure).
const WRITE_QUEUE: usize = 1024;
/// Most changes applied before one flush.
const MAX_GROUP: usize = 256;

/// What the writer runs: applies a change, returns how to answer it once the flush is done.
type Change = Box<dyn FnOnce(&Meta) -> Box<dyn FnOnce(Result<(), Error>) + Send> + Send>;

/// Async access to [`Meta`]: changes through the writer thread, reads on blocking threads.
#[derive(Clone)]
pub struct Store {
    meta: Meta,
    writer: mpsc::Sender<Change>,
    reads: Arc<Semaphore>,
}

impl Store {
    /// Starts the writer thread over `meta`. It stops, after a last flush, once every
    /// `Store` clone is dropped.
    pub fn start(meta: Meta) -> Result<Store, Error> {
        let (writer, changes) = mpsc::channel(WRITE_QUEUE);
        let thread_meta = meta.clone();
        std::thread::Builder::new()
            .name("sled-writer".into())
            .spawn(move || write_loop(&thread_meta, changes))
            .map_err(|err| Error::internal(format!("starting the metadata writer: {err}")))?;
        Ok(Store {
            meta,
            writer,
            reads: Arc::new(Semaphore::new(MAX_READS)),
        })
    }

    /// Runs `read` on a blocking thread, in the caller's span.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Meta) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|_| Error::unavailable("metadata store closed"))?;
        let meta = self.meta.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| read(&meta)))
            .await
            .map_err(|err| Error::internal(format!("metadata read failed: {err}")))?
    }

    /// Runs `change` on the writer thread and answers once it is durable. A change that
    /// fails leaves nothing behind (it is a transaction, or a single write); a failed flush
    /// fails every change of its group.
    pub async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&Meta) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (answer, answered) = oneshot::channel();
        let span = tracing::Span::current();
        let change: Change = Box::new(move |meta| {
            let result = span.in_scope(|| {
                catch_unwind(AssertUnwindSafe(|| change(meta)))
                    .unwrap_or_else(|_| Err(Error::internal("metadata change panicked")))
            });
            Box::new(move |flushed: Result<(), Error>| {
                let _ = answer.send(flushed.and(result));
            })
        });
        self.writer
            .send(change)
            .await
            .map_err(|_| Error::unavailable("metadata writer stopped"))?;
        answered
            .await
            .map_err(|_| Error::internal("metadata writer dropped a change"))?
    }

    /// Waits until every change sent before is durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.write(|_| Ok(())).await
    }
}

/// The writer thread: takes the changes that are waiting (at most [`MAX_GROUP`]), applies
/// them in order, flushes once, then answers them.
fn write_loop(meta: &Meta, mut changes: mpsc::Receiver<Change>) {
    let mut answers = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = changes.blocking_recv() {
        answers.push(first(meta));
        while answers.len() < MAX_GROUP {
            match changes.try_recv() {
                Ok(change) => answers.push(change(meta)),
                Err(_) => break,
            }
        }
        let flushed = meta.flush();
        if let Err(err) = &flushed {
            tracing::error!(error = %err, changes = answers.len(), "metadata flush failed");
        }
        for answer in answers.drain(..) {
            answer(flushed.clone());
        }
    }
    if let Err(err) = meta.flush() {
        tracing::error!(error = %err, "last metadata flush failed");
    }
    tracing::debug!("metadata writer stopped");
}

#[cfg(test)]
mod tests {
    use pixelmesh_proto::v1::BlobInfo;

    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Meta::open(dir.path(), 100).expect("open");
        (dir, Store::start(meta).expect("start"))
    }

    #[tokio::test]
    async fn changes_are_answered_in_order_and_reads_see_them() {
        let (_dir, store) = store();
        let blob = |i: u32| BlobInfo {
            id: format!("{i:064x}"),
            ..Default::default()
        };
        let writes: Vec<_> = (0..200u32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write(move |meta| meta.add_blob(&blob(i), "alice"))
                        .await
                        .expect("write")
                })
            })
            .collect();
        for write in writes {
            write.await.expect("task");
        }
        // Every change was answered after its flush, so every one is readable now.
        let owned = store
            .read(move |meta| {
                (0..200u32)
                    .map(|i| meta.owns(&blob(i).id, "alice"))
                    .collect::<Result<Vec<bool>, Error>>()
            })
            .await
            .expect("read");
        assert!(owned.iter().all(|owned| *owned));
        assert_eq!(
            store
                .read(|meta| meta.recorded_blobs())
                .await
                .expect("ids")
                .len(),
            200
        );
    }

    #[tokio::test]
    async fn a_failed_change_is_answered_with_its_error_and_others_go_on() {
        let (_dir, store) = store();
        let err = store
            .write(|_| Err::<(), _>(Error::invalid("no")))
            .await
            .expect_err("refused");
        assert_eq!(err.message, "no");
        let err = store
            .write(|_| -> Result<(), Error> { panic!("boom") })
            .await
            .expect_err("panicked");
        assert!(err.message.contains("panicked"), "{}", err.message);
        store
            .write(|meta| meta.add_blob(&BlobInfo::default(), ""))
            .await
            .expect("the writer survives");
    }
}
