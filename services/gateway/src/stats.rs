//! What the dashboard shows beside jobs and workers: the work queue's depth, from JetStream's
//! own consumer counters, and images ended per minute, counted from the progress events every
//! gateway already receives.
//!
//! Each replica counts for itself from the moment it starts; NATS delivers every progress
//! event to every gateway, so replicas that have run for the whole window agree.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use pixelmesh_common::{nats, time::now_ms};
use pixelmesh_proto::{
    Error,
    v1::{ImageState, JobEvent},
};
use prost::Message;

use crate::fanout::{Delivery, Fanout};

/// Minutes of throughput kept and reported.
pub const WINDOW_MINUTES: usize = 15;
const MINUTE_MS: i64 = 60_000;

/// Images that ended in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// The minute's start, in milliseconds since the epoch.
    pub at_ms: i64,
    pub done: u64,
    pub failed: u64,
}

/// Per-minute counts of ended images over the last [`WINDOW_MINUTES`].
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    minutes: Arc<Mutex<VecDeque<Minute>>>,
}

impl Throughput {
    /// Counts one image that ended at `at_ms`.
    pub fn record(&self, at_ms: i64, state: ImageState) {
        let start = at_ms - at_ms.rem_euclid(MINUTE_MS);
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let window = WINDOW_MINUTES as i64 * MINUTE_MS;
        if minutes
            .back()
            .is_some_and(|newest| start <= newest.at_ms - window)
        {
            // Older than the window: a very late event.
            return;
        }
        // Kept in order, quiet minutes absent; a late event lands in its own minute.
        let i = match minutes.iter().rposition(|m| m.at_ms <= start) {
            Some(i) if minutes[i].at_ms == start => i,
            found => {
                let i = found.map_or(0, |i| i + 1);
                minutes.insert(
                    i,
                    Minute {
                        at_ms: start,
                        ..Minute::default()
                    },
                );
                i
            }
        };
        let minute = &mut minutes[i];
        match state {
            ImageState::Done => minute.done += 1,
            ImageState::Failed => minute.failed += 1,
            _ => {}
        }
        let newest = minutes.back().map_or(start, |m| m.at_ms);
        while minutes.front().is_some_and(|m| m.at_ms <= newest - window) {
            minutes.pop_front();
        }
    }

    /// The last [`WINDOW_MINUTES`] minutes up to `now_ms`, oldest first, quiet minutes as
    /// zeros.
    pub fn window(&self, now_ms: i64) -> Vec<Minute> {
        let current = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        (0..WINDOW_MINUTES as i64)
            .rev()
            .map(|ago| {
                let at_ms = current - ago * MINUTE_MS;
                minutes
                    .iter()
                    .find(|m| m.at_ms == at_ms)
                    .copied()
                    .unwrap_or(Minute {
                        at_ms,
                        ..Minute::default()
                    })
            })
            .collect()
    }

    /// Counts every image that ends, from the progress events on NATS (through the
    /// gateway's shared subscription), until the connection closes.
    pub async fn count(self, fanout: &Fanout<async_nats::Message>) -> Result<(), Error> {
        let mut progress = fanout.subscribe(nats::ALL_PROGRESS).await?;
        tokio::spawn(async move {
            loop {
                let message = match progress.recv().await {
                    Delivery::Message(message) => message,
                    // Counted short, as a dropped NATS core message would be.
                    Delivery::Missed(missed) => {
                        tracing::debug!(missed, "throughput fell behind progress events");
                        continue;
                    }
                    Delivery::Closed => return,
                };
                let Ok(event) = JobEvent::decode(message.payload) else {
                    continue;
                };
                if let Some(image) = &event.image
                    && matches!(image.state(), ImageState::Done | ImageState::Failed)
                {
                    self.record(now_ms(), image.state());
                }
            }
        });
        Ok(())
    }
}

/// The filter workers' queue, from the JetStream consumer they share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queue {
    /// Tasks waiting for a worker.
    pub pending: u64,
    /// Tasks a worker holds and has not acknowledged yet.
    pub in_flight: u64,
    /// Tasks delivered more than once and not yet acknowledged (workers died or timed out).
    pub redelivered: u64,
}

pub async fn queue(client: &async_nats::Client) -> Result<Queue, Error> {
    let js = async_nats::jetstream::new(client.clone());
    let unavailable =
        |err: &dyn std::fmt::Display| Error::unavailable(format!("reading the task queue: {err}"));
    let stream = js
        .get_stream(nats::TASKS_STREAM)
        .await
        .map_err(|err| unavailable(&err))?;
    let info = stream
        .consumer_info(nats::FILTER_CONSUMER)
        .await
        .map_err(|err| unavailable(&err))?;
    Ok(Queue {
        pending: info.num_pending,
        in_flight: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_fill_a_fixed_window_with_zeros_between() {
        let t = Throughput::default();
        let base = 1_000 * MINUTE_MS;
        t.record(base + 5, ImageState::Done);
        t.record(base + 59_999, ImageState::Done);
        t.record(base + 10, ImageState::Failed);
        t.record(base + 2 * MINUTE_MS, ImageState::Done);
        // Late, for a minute already closed: still counted.
        t.record(base + 30_000, ImageState::Done);
        // Cancelled images are not throughput.
        t.record(base + 2 * MINUTE_MS, ImageState::Cancelled);
        let window = t.window(base + 2 * MINUTE_MS + 1);
        assert_eq!(window.len(), WINDOW_MINUTES);
        let last = &window[WINDOW_MINUTES - 3..];
        assert_eq!(
            last,
            [
                Minute {
                    at_ms: base,
                    done: 3,
                    failed: 1
                },
                Minute {
                    at_ms: base + MINUTE_MS,
                    done: 0,
                    failed: 0
                },
                Minute {
                    at_ms: base + 2 * MINUTE_MS,
                    done: 1,
                    failed: 0
                },
            ]
        );
        assert!(
            window[..WINDOW_MINUTES - 3]
                .iter()
                .all(|m| m.done == 0 && m.failed == 0)
        );
        assert_eq!(window[0].at_ms, base + 2 * MINUTE_MS - 14 * MINUTE_MS);
    }

    #[test]
    fn old_minutes_leave_the_window() {
        let t = Throughput::default();
        for minute in 0..40 {
            t.record(minute * MINUTE_MS, ImageState::Done);
        }
        assert_eq!(t.minutes.lock().unwrap().len(), WINDOW_MINUTES);
        let window = t.window(39 * MINUTE_MS);
        assert!(window.iter().all(|m| m.done == 1));
        // An hour later, nothing is recent.
        assert!(t.window(100 * MINUTE_MS).iter().all(|m| m.done == 0));
        // A late event older than the window is dropped, not misfiled.
        t.record(0, ImageState::Done);
        assert!(t.window(39 * MINUTE_MS).iter().all(|m| m.done == 1));
    }
}
