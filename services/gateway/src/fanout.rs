//! One NATS subscription per subject for the whole gateway, fanned out to every watcher.
//!
//! A watcher (an SSE or gRPC event stream, the feed, the throughput counter) takes a
//! [`Subscription`] from the [`Fanout`]: the first one for a subject subscribes on NATS and
//! starts a pump task that copies each message into a broadcast channel; later ones only
//! join that channel; when the last one is dropped the pump stops and unsubscribes. So a
//! thousand browsers on one job cost NATS and this gateway one subscription, not a thousand.
//!
//! A watcher that falls more than [`CAPACITY`] messages behind loses the oldest ones and is
//! told how many ([`Delivery::Missed`]), as NATS core may drop a message anyway: job watchers
//! resync from storage, the feed goes on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use pixelmesh_proto::Error;
use tokio::sync::{broadcast, oneshot};

/// Messages one subject's channel holds for its slowest watcher. Payloads are shared
/// (`Bytes`), so this bounds entries, not copies.
pub const CAPACITY: usize = 512;

/// Opens the upstream subscription of a subject: NATS in the gateway, a fake in tests.
type Source<T> =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<BoxStream<'static, T>, Error>> + Send + Sync>;

/// The shared subscriptions, by subject.
pub struct Fanout<T> {
    source: Source<T>,
    subjects: Arc<Mutex<HashMap<String, Entry<T>>>>,
    /// Tells entries apart across a subject's lives, so a pump that ends removes its own.
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Clone for Fanout<T> {
    fn clone(&self) -> Self {
        Fanout {
            source: self.source.clone(),
            subjects: self.subjects.clone(),
            next_id: self.next_id.clone(),
        }
    }
}

/// One subject's live subscription.
struct Entry<T> {
    id: u64,
    sender: broadcast::Sender<T>,
    watchers: usize,
    /// Dropped with the entry: the pump's signal to unsubscribe.
    _stop: oneshot::Sender<()>,
}

/// What a watcher receives next.
#[derive(Debug)]
pub enum Delivery<T> {
    Message(T),
    /// This many messages went by while the watcher was behind.
    Missed(u64),
    /// The upstream subscription ended for good (the NATS client closed).
    Closed,
}

/// A watcher's share of a subject; dropping it leaves the subject.
pub struct Subscription<T: Clone + Send + 'static> {
    receiver: broadcast::Receiver<T>,
    /// Held for its `Drop`: leaving the subject.
    _lease: Lease<T>,
}

struct Lease<T> {
    subjects: Arc<Mutex<HashMap<String, Entry<T>>>>,
    subject: String,
    id: u64,
}

impl Fanout<async_nats::Message> {
    /// Subscriptions on `client`.
    pub fn nats(client: async_nats::Client) -> Self {
        Fanout::new(Arc::new(move |subject: String| {
            let client = client.clone();
            Box::pin(async move {
                let subscriber = client.subscribe(subject.clone()).await.map_err(|err| {
                    Error::unavailable(format!("subscribing to {subject}: {err}"))
                })?;
                Ok(subscriber.boxed())
            })
        }))
    }
}

impl<T: Clone + Send + 'static> Fanout<T> {
    fn new(source: Source<T>) -> Self {
        Fanout {
            source,
            subjects: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Joins `subject`, subscribing upstream if no watcher has yet. Returns once the
    /// upstream subscription is made (or was already), so whatever is read after this call
    /// cannot miss a message published after it.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription<T>, Error> {
        if let Some(joined) = self.join(subject) {
            return Ok(joined);
        }
        // Subscribed outside the lock; a watcher that raced us here may win, and then ours
        // is dropped (unsubscribed) and we join theirs.
        let upstream = (self.source)(subject.to_string()).await?;
        let mut subjects = lock(&self.subjects);
        if let Some(entry) = subjects.get_mut(subject) {
            entry.watchers += 1;
            return Ok(Subscription {
                receiver: entry.sender.subscribe(),
                _lease: Lease {
                    subjects: self.subjects.clone(),
                    subject: subject.to_string(),
                    id: entry.id,
                },
            });
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = broadcast::channel(CAPACITY);
        let (stop, stopped) = oneshot::channel();
        subjects.insert(
            subject.to_string(),
            Entry {
                id,
                sender: sender.clone(),
                watchers: 1,
                _stop: stop,
            },
        );
        tokio::spawn(pump(
            upstream,
            sender,
            stopped,
            self.subjects.clone(),
            subject.to_string(),
            id,
        ));
        tracing::debug!(subject, "subscribed for the gateway's watchers");
        Ok(Subscription {
            receiver,
            _lease: Lease {
                subjects: self.subjects.clone(),
                subject: subject.to_string(),
                id,
            },
        })
    }

    fn join(&self, subject: &str) -> Option<Subscription<T>> {
        let mut subjects = lock(&self.subjects);
        let entry = subjects.get_mut(subject)?;
        entry.watchers += 1;
        Some(Subscription {
            receiver: entry.sender.subscribe(),
            _lease: Lease {
                subjects: self.subjects.clone(),
                subject: subject.to_string(),
                id: entry.id,
            },
        })
    }

    /// Subjects with a live upstream subscription.
    pub fn subjects(&self) -> usize {
        lock(&self.subjects).len()
    }
}

impl<T: Clone + Send + 'static> Subscription<T> {
    /// The next message; cancel-safe, so it may sit in a `select!` or a timeout.
    pub async fn recv(&mut self) -> Delivery<T> {
        match self.receiver.recv().await {
            Ok(message) => Delivery::Message(message),
            Err(broadcast::error::RecvError::Lagged(missed)) => Delivery::Missed(missed),
            Err(broadcast::error::RecvError::Closed) => Delivery::Closed,
        }
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        let mut subjects = lock(&self.subjects);
        if let Some(entry) = subjects.get_mut(&self.subject)
            && entry.id == self.id
        {
            entry.watchers -= 1;
            if entry.watchers == 0 {
                // Dropping the entry drops its stop sender: the pump unsubscribes.
                subjects.remove(&self.subject);
            }
        }
    }
}

/// Copies `upstream` into `sender` until the subject's last watcher leaves (`stopped`
/// resolves) or upstream ends; dropping `upstream` then unsubscribes.
async fn pump<T: Clone + Send + 'static>(
    mut upstream: BoxStream<'static, T>,
    sender: broadcast::Sender<T>,
    mut stopped: oneshot::Receiver<()>,
    subjects: Arc<Mutex<HashMap<String, Entry<T>>>>,
    subject: String,
    id: u64,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            message = upstream.next() => match message {
                // An error only says no watcher is listening right now.
                Some(message) => { let _ = sender.send(message); }
                None => {
                    // Gone for good: forget the entry so the next watcher subscribes anew,
                    // and let the watchers see the channel close.
                    let mut subjects = lock(&subjects);
                    if subjects.get(&subject).is_some_and(|entry| entry.id == id) {
                        subjects.remove(&subject);
                    }
                    tracing::debug!(subject, "upstream subscription ended");
                    break;
                }
            },
        }
    }
    tracing::debug!(subject, "unsubscribed: no watcher left");
}

/// The map is only ever held for a few instructions; a panic while holding it leaves it
/// consistent, so a poisoned lock is taken as is.
fn lock<T>(
    subjects: &Mutex<HashMap<String, Entry<T>>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
    subjects
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, time::Duration};

    use tokio::sync::mpsc;

    use super::*;

    /// A source whose streams are fed by the test and count themselves while alive.
    struct Fake {
        fanout: Fanout<u32>,
        live: Arc<AtomicUsize>,
        opened: Arc<AtomicUsize>,
        feeds: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<u32>>>>,
    }

    /// Counts down `live` when the stream is dropped, as dropping a NATS subscriber
    /// unsubscribes.
    struct Alive(Arc<AtomicUsize>);

    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn fake() -> Fake {
        let live = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let feeds: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<u32>>>> = Arc::default();
        let source: Source<u32> = {
            let (live, opened, feeds) = (live.clone(), opened.clone(), feeds.clone());
            Arc::new(move |subject: String| {
                let (live, opened, feeds) = (live.clone(), opened.clone(), feeds.clone());
                Box::pin(async move {
                    live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let alive = Alive(live);
                    let (tx, rx) = mpsc::unbounded_channel();
                    feeds.lock().expect("feeds").insert(subject, tx);
                    let stream =
                        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |n| {
                            let _ = &alive;
                            n
                        });
                    Ok(stream.boxed())
                })
            })
        };
        Fake {
            fanout: Fanout::new(source),
            live,
            opened,
            feeds,
        }
    }

    impl Fake {
        fn live(&self) -> usize {
            self.live.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn publish(&self, subject: &str, n: u32) {
            let feeds = self.feeds.lock().expect("feeds");
            let _ = feeds.get(subject).expect("subscribed upstream").send(n);
        }

        /// Waits until the pumps have unsubscribed down to `n` upstream streams.
        async fn settles_at(&self, n: usize) {
            for _ in 0..500 {
                if self.live() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(self.live(), n, "upstream subscriptions");
        }
    }

    async fn next(subscription: &mut Subscription<u32>) -> Delivery<u32> {
        tokio::time::timeout(Duration::from_secs(5), subscription.recv())
            .await
            .expect("a delivery in time")
    }

    #[tokio::test]
    async fn one_upstream_per_subject_shared_until_the_last_watcher_leaves() {
        let fake = fake();
        let mut watchers = Vec::new();
        for _ in 0..100 {
            watchers.push(fake.fanout.subscribe("a").await.expect("a"));
        }
        let mut other = fake.fanout.subscribe("b").await.expect("b");
        assert_eq!((fake.live(), fake.fanout.subjects()), (2, 2));

        fake.publish("a", 7);
        fake.publish("b", 8);
        for watcher in &mut watchers {
            assert!(matches!(next(watcher).await, Delivery::Message(7)));
        }
        assert!(matches!(next(&mut other).await, Delivery::Message(8)));

        // Leaving one by one keeps the subscription until the very last.
        let last = watchers.pop().expect("a watcher");
        watchers.clear();
        tokio::task::yield_now().await;
        assert_eq!((fake.live(), fake.fanout.subjects()), (2, 2));
        drop(last);
        fake.settles_at(1).await;
        assert_eq!(fake.fanout.subjects(), 1);
        drop(other);
        fake.settles_at(0).await;
        assert_eq!(fake.fanout.subjects(), 0);

        // A later watcher subscribes afresh and hears what is published from then on.
        let mut again = fake.fanout.subscribe("a").await.expect("a again");
        assert_eq!(fake.opened.load(std::sync::atomic::Ordering::SeqCst), 3);
        fake.publish("a", 9);
        assert!(matches!(next(&mut again).await, Delivery::Message(9)));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_what_it_missed() {
        let fake = fake();
        let mut slow = fake.fanout.subscribe("a").await.expect("slow");
        let mut fast = fake.fanout.subscribe("a").await.expect("fast");
        let extra = 5;
        for n in 0..(CAPACITY + extra) as u32 {
            fake.publish("a", n);
            assert!(matches!(next(&mut fast).await, Delivery::Message(m) if m == n));
        }
        assert!(matches!(next(&mut slow).await, Delivery::Missed(m) if m == extra as u64));
        assert!(matches!(next(&mut slow).await, Delivery::Message(m) if m == extra as u32));
    }

    #[tokio::test]
    async fn watchers_see_the_end_when_upstream_ends_and_the_next_one_subscribes_anew() {
        let fake = fake();
        let mut watcher = fake.fanout.subscribe("a").await.expect("a");
        // The upstream stream ends: as a NATS subscriber does when its client closes.
        fake.feeds.lock().expect("feeds").remove("a");
        assert!(matches!(next(&mut watcher).await, Delivery::Closed));
        fake.settles_at(0).await;
        assert_eq!(fake.fanout.subjects(), 0);
        let _again = fake.fanout.subscribe("a").await.expect("a again");
        assert_eq!((fake.live(), fake.fanout.subjects()), (1, 1));
        // The old watcher leaving does not take the new subscription with it.
        drop(watcher);
        assert_eq!((fake.live(), fake.fanout.subjects()), (1, 1));
    }
}
