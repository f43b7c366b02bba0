//! The schedulers a gateway asks: any one of them does the job (they share the work, see
//! the scheduler's `lease` module). Calls go to each in turn, and move on to the next while
//! one cannot be reached, so a dead scheduler costs a failed connect, not a failed request.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use pixelmesh_common::grpc::{Channel, MAX_MESSAGE_BYTES, channel};
use pixelmesh_proto::v1::scheduler_client::SchedulerClient;
use tonic::{Code, Response, Status};

#[derive(Clone)]
pub struct Schedulers {
    clients: Arc<[SchedulerClient<Channel>]>,
    next: Arc<AtomicUsize>,
}

impl Schedulers {
    /// One scheduler's gRPC URL, or several as a comma-separated list.
    pub fn new(urls: &str) -> anyhow::Result<Self> {
        let clients = pixelmesh_common::config::url_list(urls)
            .into_iter()
            .map(|url| {
                Ok(SchedulerClient::new(channel(url)?)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            })
            .collect::<anyhow::Result<Arc<[_]>>>()?;
        anyhow::ensure!(!clients.is_empty(), "no scheduler url given");
        Ok(Schedulers {
            clients,
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `call` on the next scheduler, and on the ones after it while they answer
    /// `Unavailable`. A submit sent again this way is safe: it carries the job id the gateway
    /// chose, so the next scheduler finishes the job the dead one stored (or returns it, if it
    /// was confirmed) instead of making a second.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(SchedulerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.clients.len();
        let mut tried = 1;
        loop {
            let client = self.clients[(first + tried - 1) % count].clone();
            match call(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::Unavailable && tried < count => {
                    tracing::warn!(error = %status.message(), "scheduler unavailable, trying the next");
                    tried += 1;
                }
                Err(status) => return Err(status),
            }
        }
    }
}
